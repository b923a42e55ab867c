"""Poisoning detection prototype (property 4 of the study: "detect and resist malicious behaviour").

Threats T1-T4 of docs/decentralized.md, injected into a `train` split and then looked for without any
ground truth:

- **inflate** (T1): a liar probe reports every successful RTT as `rtt * factor + offset`;
- **deflate** (T2): a liar reports `rtt * factor` with factor < 1 (often below the speed-of-light floor);
- **fake_dst** (T3): a liar rewrites a share of its rows to destinations in prefixes nobody uses, with
  RTTs drawn from its own RTT distribution (plausible numbers, non-existent pairs);
- **sybil** (T4): k new probe ids with new source addresses in one unused /24, all copying an honest
  template probe and all claiming the same lie: a popular target is `sybil_rtt_ms` away.

Detectors, each a per-probe suspicion score (higher = more suspicious), none of them reads the truth:

- **nll**: the mean token NLL of the probe's measurements under a model trained on the poisoned split
  (`privacy.probe_loss_table`): measurements unlike everyone else's are expensive to encode;
- **consistency**: agreement with *other* probes. (1) a robust z-score of the probe's per-destination
  median log RTT against the leave-one-probe-out median of the same (src prefix, dst prefix) group, else
  of the same dst prefix; (2) the share of triangle checks the probe's claims fail against RTTs measured
  by other probes (RTT(a,d) must lie within [|RTT(a,c) - RTT(c,d)|, RTT(a,c) + RTT(c,d)] up to a slack,
  and two claims from one source must respect RTT(d1,d2)); (3) the share of the probe's rows to
  destinations no other probe measures or is. Each part is robustly standardised across probes and the
  score is their maximum ("any test fires");
- **combined**: the rank average of nll and consistency.

Then the cost of poisoning: a tiny model and the PrefixPairMedian baseline fitted on the poisoned split
and on a cleaned one (the top-scored probes dropped) are compared on the same held-out rows.
Pure library: no Dagster imports.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pingllm_core.data import records
from pingllm_core.evaluation import figures
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.baselines import PrefixPairMedian, address_prefix

LIAR_KINDS = ("inflate", "deflate", "fake_dst", "sybil")
HONEST = "honest"
DETECTORS = ("nll", "consistency", "combined")


# ------------------------------------------------------------------------------------------ injection


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """Which lies are told, by how many probes, and how big they are."""

    liar_share: float = 0.12  # share of existing probes that lie (split evenly over the solo kinds)
    kinds: tuple[str, ...] = ("inflate", "deflate", "fake_dst")  # solo liar kinds, assigned round-robin
    inflate_factor: float = 2.0  # T1: rtt -> rtt * factor + offset
    inflate_offset_ms: float = 30.0
    deflate_factor: float = 0.25  # T2: rtt -> rtt * factor
    fake_dst_share: float = 0.5  # T3: share of the liar's rows moved to fake destinations
    fake_dsts_per_probe: int = 3  # distinct fake addresses per fake_dst liar (each in its own unused prefix)
    sybil_count: int = 6  # T4: new identities (0 = no Sybil group)
    sybil_rtt_ms: float = 1.0  # their shared lie: the target is this close
    sybil_target_share: float = 0.5  # share of each Sybil's rows that go to the target

    def __post_init__(self) -> None:
        if not 0.0 <= self.liar_share < 1.0:
            raise ValueError(f"liar_share must be in [0, 1), got {self.liar_share}")
        bad = set(self.kinds) - {"inflate", "deflate", "fake_dst"}
        if bad or not self.kinds:
            raise ValueError(
                f"kinds must be a non-empty subset of inflate/deflate/fake_dst, got {self.kinds}"
            )
        if self.sybil_count < 0 or self.fake_dsts_per_probe < 1:
            raise ValueError("sybil_count must be >= 0 and fake_dsts_per_probe >= 1")
        if not 0.0 < self.fake_dst_share <= 1.0 or not 0.0 < self.sybil_target_share <= 1.0:
            raise ValueError("fake_dst_share and sybil_target_share must be in (0, 1]")


@dataclasses.dataclass
class PoisonTruth:
    """What `inject_poison` did: per-probe labels and per-row kinds (never given to a detector)."""

    labels: pd.DataFrame  # prb_id, label (HONEST or a LIAR_KINDS entry), rows, rewritten
    row_kind: np.ndarray  # object[n rows of the poisoned frame]: "" untouched, else the liar kind
    sybil_target: str | None = None
    sybil_prefix: str | None = None
    fake_prefixes: list[str] = dataclasses.field(default_factory=list)

    def label_of(self, prb_ids) -> np.ndarray:
        """Label of each probe id (HONEST where unknown)."""
        s = self.labels.set_index("prb_id")["label"]
        return s.reindex(np.asarray(prb_ids)).fillna(HONEST).to_numpy(object)

    def counts(self) -> dict[str, int]:
        """Probes per label."""
        return {k: int(v) for k, v in self.labels["label"].value_counts().items()}


def _used_prefixes(df: pd.DataFrame) -> set[str]:
    return set(address_prefix(np.concatenate([df.src_addr.to_numpy(object), df.dst_addr.to_numpy(object)])))


def _fresh_prefix(rng: np.random.Generator, used: set[str], v6: bool) -> str:
    """A public-looking /24 (or /48) that appears nowhere in the data; it is added to `used`."""
    for _ in range(10_000):
        if v6:
            net = f"2a0{int(rng.integers(1, 10))}:{int(rng.integers(0, 1 << 16)):x}:{int(rng.integers(0, 1 << 16)):x}::/48"
        else:
            first = int(rng.integers(1, 224))
            if first in (10, 100, 127, 169, 172, 192, 198, 203):  # stay clear of special-purpose space
                continue
            net = f"{first}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}.0/24"
        if net not in used:
            used.add(net)
            return net
    raise RuntimeError("no unused prefix found")


def _host(prefix: str, k: int) -> str:
    return str(ipaddress.ip_network(prefix)[k])


def inject_poison(
    train_df: pd.DataFrame,
    cfg: PoisonConfig = PoisonConfig(),
    seed: int = 0,  # noqa: B008 - frozen
) -> tuple[pd.DataFrame, PoisonTruth]:
    """Rewrite the rows of a share of probes into lies and add a Sybil group; returns (poisoned, truth).

    `train_df` has the split columns (event_time, src_addr, dst_addr, ip_version, rtt, prb_id). Failed
    rows (rtt <= 0) of inflate/deflate liars stay failed; fake_dst rows get a successful RTT drawn from the
    probe's own successful RTTs. Sybil rows copy an honest template probe (times shifted, RTTs jittered),
    with a share of rows redirected to the most-measured destination at `sybil_rtt_ms` (+-20%).
    """
    rng = np.random.default_rng(seed)
    df = train_df.reset_index(drop=True).copy()
    if df["prb_id"].isna().any():
        raise ValueError("inject_poison needs a prb_id on every row")
    row_kind = np.full(len(df), "", dtype=object)
    probes = np.sort(df["prb_id"].unique())
    n_liars = int(round(cfg.liar_share * len(probes)))
    liars = rng.choice(probes, size=n_liars, replace=False) if n_liars else np.zeros(0, probes.dtype)
    used = _used_prefixes(df)
    rtt = df["rtt"].to_numpy(np.float64).copy()
    dst = df["dst_addr"].to_numpy(object).copy()
    prb = df["prb_id"].to_numpy()
    v6 = df["ip_version"].to_numpy() == 6
    labels: dict[int, str] = {int(p): HONEST for p in probes}
    fake_prefixes: list[str] = []
    for i, p in enumerate(liars):
        kind = cfg.kinds[i % len(cfg.kinds)]
        labels[int(p)] = kind
        rows = np.flatnonzero(prb == p)
        ok = rows[rtt[rows] > 0]
        if kind == "inflate":
            rtt[ok] = rtt[ok] * cfg.inflate_factor + cfg.inflate_offset_ms
            row_kind[ok] = kind
        elif kind == "deflate":
            rtt[ok] = rtt[ok] * cfg.deflate_factor
            row_kind[ok] = kind
        else:  # fake_dst: a share of rows to addresses in unused prefixes, with plausible RTTs
            pick = np.sort(
                rng.choice(rows, size=max(1, int(round(cfg.fake_dst_share * len(rows)))), replace=False)
            )
            pool = rtt[ok] if len(ok) else np.array([50.0])
            fakes = {fam: [] for fam in (False, True)}
            for fam in (False, True):
                for _ in range(cfg.fake_dsts_per_probe):
                    net = _fresh_prefix(rng, used, fam)
                    fake_prefixes.append(net)
                    fakes[fam].append(_host(net, int(rng.integers(1, 200))))
            which = rng.integers(0, cfg.fake_dsts_per_probe, size=len(pick))
            dst[pick] = [fakes[bool(f)][w] for f, w in zip(v6[pick], which, strict=True)]
            rtt[pick] = rng.choice(pool, size=len(pick))
            row_kind[pick] = kind
    df["rtt"], df["dst_addr"] = rtt, dst
    truth_rows = [{"prb_id": int(p), "label": lab} for p, lab in labels.items()]
    sybil_target = sybil_prefix = None
    if cfg.sybil_count:
        honest = [p for p, lab in labels.items() if lab == HONEST]
        by_probe = df[~v6 & df["prb_id"].isin(honest)].groupby("prb_id").size()
        template = int(by_probe.idxmax()) if len(by_probe) else int(honest[0])
        tmpl = df[(df["prb_id"] == template) & (df["ip_version"] == 4)]
        counts = df.loc[~v6].groupby("dst_addr")["prb_id"].nunique()
        counts = counts.drop(labels=list(tmpl["dst_addr"].unique()), errors="ignore")
        sybil_target = str(counts.idxmax()) if len(counts) else str(tmpl["dst_addr"].iat[0])
        sybil_prefix = _fresh_prefix(rng, used, v6=False)
        new_id = int(probes.max()) + 1 if len(probes) else 1
        frames = []
        for k in range(cfg.sybil_count):
            s = tmpl.copy()
            s["prb_id"] = np.asarray(new_id + k, dtype=df["prb_id"].dtype)
            s["src_addr"] = _host(sybil_prefix, 10 + k)
            s["event_time"] = s["event_time"] + pd.to_timedelta(int(rng.integers(-120, 121)), unit="s")
            r = s["rtt"].to_numpy(np.float64)
            r = np.where(r > 0, r * np.exp(rng.normal(0.0, 0.05, len(r))), r)
            tgt = rng.random(len(s)) < cfg.sybil_target_share
            r[tgt] = cfg.sybil_rtt_ms * rng.uniform(0.8, 1.2, int(tgt.sum()))
            d = s["dst_addr"].to_numpy(object).copy()
            d[tgt] = sybil_target
            s["rtt"], s["dst_addr"] = r, d
            frames.append(s)
            truth_rows.append({"prb_id": new_id + k, "label": "sybil"})
        df = pd.concat([df, *frames], ignore_index=True)
        row_kind = np.concatenate([row_kind, np.full(sum(len(f) for f in frames), "sybil", object)])
    lab = pd.DataFrame(truth_rows)
    per = pd.DataFrame({"prb_id": df["prb_id"].to_numpy(np.int64), "rw": row_kind != ""})
    agg = per.groupby("prb_id")["rw"].agg(["size", "sum"])
    lab["rows"] = agg["size"].reindex(lab["prb_id"]).fillna(0).to_numpy(np.int64)
    lab["rewritten"] = agg["sum"].reindex(lab["prb_id"]).fillna(0).to_numpy(np.int64)
    truth = PoisonTruth(lab, row_kind, sybil_target, sybil_prefix, fake_prefixes)
    return df, truth


# ---------------------------------------------------------------------------------- consistency detector


@dataclasses.dataclass(frozen=True)
class ConsistencyConfig:
    """Slack of the triangle checks and floors of the robust standardisation."""

    # A triangle bound is stretched (upper) / shrunk (lower) by this factor, plus / minus slack_ms. Real paths
    # are inflated 1.3-3x over the great circle and detour on top (so does the synthetic internet): honest
    # pairs break a tight triangle inequality often; at 3x about 5% of honest checks fail.
    slack_mult: float = 3.0
    slack_ms: float = 5.0
    z_clip: float = 10.0  # |z| of one (probe, dst) is clipped here before averaging
    min_rows: int = 3  # (probe, src, dst) groups with fewer successful rows are ignored


def _loo_median(values: np.ndarray, groups: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of the members of each value's group with another `owner` (NaN where none), and their count.

    owner = probe id gives leave-one-probe-out; owner = source prefix leaves a whole prefix out, so
    identities in one prefix (a Sybil group) cannot vouch for each other.
    """
    out = np.full(len(values), np.nan)
    others = np.zeros(len(values), np.int64)
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    bounds = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        if b - a < 2:
            continue
        v, o = values[idx], owner[idx]
        for j, i in enumerate(idx):
            keep = o != o[j]
            if keep.any():
                out[i] = np.median(v[keep])
                others[i] = int(keep.sum())
    return out, others


def _robust_z(resid: np.ndarray) -> np.ndarray:
    ok = np.isfinite(resid)
    if not ok.any():
        return np.full(len(resid), np.nan)
    mad = 1.4826 * np.median(np.abs(resid[ok] - np.median(resid[ok])))
    return resid / max(mad, 1e-3)


def _standardise(x: np.ndarray, floor: float) -> np.ndarray:
    """(x - median) / max(1.4826 MAD, floor), clipped at 0: how far above typical a probe is."""
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return np.maximum((x - med) / max(mad, floor), 0.0)


def _pair_table(df: pd.DataFrame, min_rows: int) -> pd.DataFrame:
    """Median RTT (ms) per (probe, src_addr, dst_addr) over successful rows, with prefixes."""
    ok = df[df["rtt"] > 0]
    g = (
        ok.groupby(["prb_id", "src_addr", "dst_addr"], observed=True)["rtt"]
        .agg(["median", "size"])
        .reset_index()
    )
    g = g[g["size"] >= min_rows].reset_index(drop=True)
    g["sp"] = address_prefix(g["src_addr"].to_numpy(object))
    g["dp"] = address_prefix(g["dst_addr"].to_numpy(object))
    return g


def _edge_key(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.where(a <= b, a, b)
    hi = np.where(a <= b, b, a)
    return lo, hi


def _triangle_checks(pairs: pd.DataFrame, cfg: ConsistencyConfig) -> pd.DataFrame:
    """Per probe: triangle checks run on its claims against other probes' edges, and how many failed."""
    u, v = _edge_key(pairs["src_addr"].to_numpy(object), pairs["dst_addr"].to_numpy(object))
    edges = pd.DataFrame(
        {"u": u, "v": v, "prb_id": pairs["prb_id"].to_numpy(), "m": pairs["median"].to_numpy()}
    )
    edges = edges[edges["u"] != edges["v"]]
    rows = []
    lo_mult, hi_mult = 1.0 / cfg.slack_mult, cfg.slack_mult
    for p, claims in pairs.groupby("prb_id", sort=True):
        other = edges[edges["prb_id"] != p].groupby(["u", "v"])["m"].median()
        if other.empty:
            rows.append({"prb_id": p, "checks": 0, "violations": 0})
            continue
        # adjacency: node -> {neighbour: rtt}
        adj: dict[str, dict[str, float]] = {}
        for (a, b), m in other.items():
            adj.setdefault(a, {})[b] = m
            adj.setdefault(b, {})[a] = m
        checks = viol = 0
        recs = list(zip(claims["src_addr"], claims["dst_addr"], claims["median"], strict=True))
        for a, d, m in recs:  # (ii) a third node c with known RTT(a, c) and RTT(c, d)
            na, nd = adj.get(a, {}), adj.get(d, {})
            for c in na.keys() & nd.keys():
                x, y = na[c], nd[c]
                checks += 1
                viol += int(m > (x + y) * hi_mult + cfg.slack_ms or m < abs(x - y) * lo_mult - cfg.slack_ms)
        for i in range(len(recs)):  # (i) two claims of one source against the known RTT(d1, d2)
            for j in range(i + 1, len(recs)):
                a1, d1, m1 = recs[i]
                a2, d2, m2 = recs[j]
                e = adj.get(d1, {}).get(d2)
                if a1 != a2 or e is None:
                    continue
                checks += 1
                viol += int(m1 + m2 < e * lo_mult - cfg.slack_ms or abs(m1 - m2) > e * hi_mult + cfg.slack_ms)
        rows.append({"prb_id": p, "checks": checks, "violations": viol})
    return pd.DataFrame(rows, columns=["prb_id", "checks", "violations"])


def consistency_scores(df: pd.DataFrame, cfg: ConsistencyConfig = ConsistencyConfig()) -> pd.DataFrame:  # noqa: B008
    """Per-probe consistency with other probes (no ground truth): one row per prb_id, higher = worse.

    Columns: z (row-weighted mean over the probe's (src prefix, dst prefix) groups of the larger of two
    robust |z| of its log median RTT: against the leave-one-probe-out median of the same (src prefix, dst
    prefix) group, and against the median of the same dst prefix from other source prefixes),
    checks / violations / violation_share (triangle checks), uncorroborated_share (share of the probe's
    rows to destinations no other probe measures and no other probe has as source address), and score =
    max of the three robustly standardised (median / MAD across probes) parts.
    """
    if df["prb_id"].isna().any():
        raise ValueError("consistency_scores needs a prb_id on every row")
    probes = np.sort(df["prb_id"].unique())
    pairs = _pair_table(df, cfg.min_rows)
    # (1) robust z against other probes' medians, per (probe, sp, dp) and per (probe, dp)
    lv = np.log(pairs["median"].to_numpy(np.float64))
    pairs["lv"] = lv
    spdp = pairs.groupby(["prb_id", "sp", "dp"], as_index=False).agg(lv=("lv", "median"), n=("size", "sum"))
    key1 = (spdp["sp"] + "|" + spdp["dp"]).to_numpy(object)
    ref1, _ = _loo_median(spdp["lv"].to_numpy(), key1, spdp["prb_id"].to_numpy())
    ref2, _ = _loo_median(spdp["lv"].to_numpy(), spdp["dp"].to_numpy(object), spdp["sp"].to_numpy(object))
    r1, r2 = spdp["lv"].to_numpy() - ref1, spdp["lv"].to_numpy() - ref2
    z1, z2 = np.abs(_robust_z(r1)), np.abs(_robust_z(r2))  # each level on its own scale
    # The worse of the two levels (a level without a reference does not count).
    z = np.where(np.isfinite(z1) & np.isfinite(z2), np.maximum(z1, z2), np.where(np.isfinite(z1), z1, z2))
    spdp["absz"] = np.minimum(z, cfg.z_clip)
    has = np.isfinite(spdp["absz"].to_numpy())
    w = spdp.loc[has]
    zmean = (w["absz"] * w["n"]).groupby(w["prb_id"]).sum() / w["n"].groupby(w["prb_id"]).sum()
    # (2) triangle checks
    tri = _triangle_checks(pairs, cfg).set_index("prb_id")
    # (3) destinations nobody else knows
    rows = df[["prb_id", "src_addr", "dst_addr"]]
    dst_probes = rows.groupby("dst_addr")["prb_id"].nunique()
    src_owner = rows.groupby("src_addr")["prb_id"].agg(lambda s: set(s.unique()))
    seen_by = dst_probes.reindex(rows["dst_addr"]).to_numpy()
    owners = src_owner.reindex(rows["dst_addr"]).to_numpy(object)
    own = rows["prb_id"].to_numpy()
    known_src = np.array(
        [isinstance(o, set) and bool(o - {p}) for o, p in zip(owners, own, strict=True)], bool
    )
    alone = (seen_by <= 1) & ~known_src
    unc = pd.Series(alone.astype(np.float64)).groupby(own).mean()
    out = pd.DataFrame(index=pd.Index(probes, name="prb_id"))
    out["z"] = zmean.reindex(probes).to_numpy()
    out["checks"] = tri["checks"].reindex(probes).fillna(0).astype(np.int64).to_numpy()
    out["violations"] = tri["violations"].reindex(probes).fillna(0).astype(np.int64).to_numpy()
    out["violation_share"] = out["violations"] / out["checks"].clip(lower=1)
    out["uncorroborated_share"] = unc.reindex(probes).fillna(0.0).to_numpy()
    parts = np.stack(
        [
            # floors keep one failed check among three (share 0.33) from looking like a blatant lie
            _standardise(out["z"].to_numpy(), 0.25),
            _standardise(out["violation_share"].to_numpy(), 0.25),
            _standardise(out["uncorroborated_share"].to_numpy(), 0.1),
        ]
    )
    out["score"] = parts.max(axis=0)
    return out


# ------------------------------------------------------------------------------------------ nll detector


def nll_scores(model, records_dir: str | Path, contexts_per_probe: int = 2, seq_len: int = 256, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> pd.DataFrame:  # fmt: skip
    """Per-probe mean token NLL (and per-field NLL) of every probe of a records folder under `model`."""
    from pingllm_core.experiments.privacy import FIELD_GROUPS, probe_loss_table

    n = records.read_index(records_dir).num_rows
    seq_len = min(seq_len, model.cfg.max_len)
    t = probe_loss_table(model, records_dir, max_probes=max(n, 1), contexts_per_probe=contexts_per_probe,
                         seq_len=seq_len, seed=seed, progress=progress)  # fmt: skip
    out = pd.DataFrame({"prb_id": t.prb_id, "nll": t.loss})
    for i, f in enumerate(FIELD_GROUPS):
        out[f"nll_{f}"] = t.field_loss[:, i]
    out = out[out["prb_id"] >= 0]
    return out.set_index("prb_id")


def rank_average(scores: Mapping[str, pd.Series]) -> pd.Series:
    """Mean percentile rank (0..1, ties averaged) of several per-probe scores on their common index."""
    frame = pd.DataFrame(dict(scores))
    ranks = frame.rank(pct=True, method="average")
    return ranks.mean(axis=1, skipna=True)


# ------------------------------------------------------------------------------------------- metrics


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Largest TPR of any threshold whose FPR is <= max_fpr (no interpolation)."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def detection_metrics(score, is_liar) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), TPR at 5% FPR, positives and negatives; score NaN -> lowest."""
    s = np.asarray(score, np.float64)
    s = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else 0.0)
    y = np.asarray(is_liar, bool)
    out = {"n_liars": int(y.sum()), "n_honest": int((~y).sum())}
    if y.all() or not y.any():
        return out | {"roc_auc": float("nan"), "pr_auc": float("nan"), "tpr_at_5pct_fpr": float("nan")}
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return out | {
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
        "tpr_at_5pct_fpr": tpr_at_fpr(fpr, tpr, 0.05),
    }


def detection_table(scores: Mapping[str, pd.Series], truth: PoisonTruth) -> dict[str, dict]:
    """{detector: {"all": metrics, <liar kind>: metrics vs honest only}} over the probes each score covers."""
    out: dict[str, dict] = {}
    for name, sc in scores.items():
        lab = truth.label_of(sc.index.to_numpy())
        res = {"all": detection_metrics(sc.to_numpy(), lab != HONEST)}
        for kind in LIAR_KINDS:
            sel = (lab == kind) | (lab == HONEST)
            if (lab == kind).any():
                res[kind] = detection_metrics(sc.to_numpy()[sel], lab[sel] == kind)
        out[name] = res
    return out


# -------------------------------------------------------------------------------------------- figure


def fig_poisoning(
    scores: Mapping[str, pd.Series], truth: PoisonTruth, accuracy: Mapping[str, Mapping[str, float]], path
) -> Path:
    """ROC curves of each detector (all liars) and bars of median relative error per model and training set."""
    fig, (ax_roc, ax_bar) = figures.plt.subplots(1, 2, figsize=(12, 4.4))
    for name, sc in scores.items():
        lab = truth.label_of(sc.index.to_numpy()) != HONEST
        s = sc.to_numpy(np.float64)
        s = np.where(np.isfinite(s), s, np.nanmin(s) - 1 if np.isfinite(s).any() else 0.0)
        if lab.all() or not lab.any():
            continue
        fpr, tpr, _ = roc_curve(lab, s)
        ax_roc.plot(fpr, tpr, label=f"{name}: AUC {roc_auc_score(lab, s):.3f}")
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax_roc.axvline(0.05, color="grey", linewidth=0.6, linestyle="--")
    ax_roc.set_xlabel("false positive rate (honest probes flagged)")
    ax_roc.set_ylabel("true positive rate (liars found)")
    ax_roc.set_title(f"poisoning detection ({int((truth.labels.label != HONEST).sum())} liars)")
    ax_roc.legend(fontsize=8, loc="lower right")
    groups = list(accuracy)
    sets = sorted({k for g in accuracy.values() for k in g}, key=["clean", "poisoned", "cleaned"].index)
    width = 0.8 / max(len(sets), 1)
    for i, s in enumerate(sets):
        vals = [accuracy[g].get(s, np.nan) for g in groups]
        ax_bar.bar(
            np.arange(len(groups)) + (i - (len(sets) - 1) / 2) * width, vals, width, label=f"trained on {s}"
        )
    ax_bar.set_xticks(np.arange(len(groups)), groups, fontsize=8, rotation=12)
    ax_bar.set_ylabel("median relative error of the predicted median RTT")
    ax_bar.set_title("accuracy on the same held-out rows")
    ax_bar.legend(fontsize=8)
    return figures._save(fig, path)


# ------------------------------------------------------------------------------------------ experiment


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of one poisoning experiment (defaults: about a minute on 2 CPU cores at demo size)."""

    poison: PoisonConfig = PoisonConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    drop_share: float = 0.15  # cleaning: drop this share of probes, top of the combined score
    train_steps: int = 100  # steps of each of the two comparison models (0 = skip the models)
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    nll_contexts: int = 2  # contexts per probe for the nll detector
    eval_batches: int = 4  # held-out batches for the eval loss of both models
    model_rows: int = 30  # held-out rows each model predicts (QueryEngine.predict, no context)
    seed: int = 0


@dataclasses.dataclass
class ExperimentResult:
    metrics: dict
    figure: Path
    scores: pd.DataFrame  # per probe: label, every detector's score and the consistency parts
    seconds: float


def _write_split(df: pd.DataFrame, path: Path) -> Path:
    from pingllm_core.ingest.parse import MEASUREMENT_SCHEMA

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [f.name for f in MEASUREMENT_SCHEMA if f.name in df.columns]
    schema = pa.schema([MEASUREMENT_SCHEMA.field(c) for c in cols])
    table = pa.Table.from_pandas(df[cols], schema=schema, preserve_index=False)
    pq.write_table(table, path)
    return path


def _train_tiny(records_dir: Path, heldout_dir: Path, ckpt_dir: Path, cfg: ExperimentConfig, say):
    from pingllm_core.data.loader import LoaderConfig, iter_eval_batches, make_train_iter
    from pingllm_core.model.recipe import RECIPE_AUGMENTATION, RECIPE_RTT_LOSS_WEIGHT
    from pingllm_core.model.tracking import NullTracker
    from pingllm_core.model.train import TrainConfig, train
    from pingllm_core.model.transformer import model_config

    shutil.rmtree(ckpt_dir, ignore_errors=True)
    loader_cfg = LoaderConfig(
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, **RECIPE_AUGMENTATION
    )
    tcfg = TrainConfig(steps=cfg.train_steps, lr=cfg.lr, warmup_steps=max(1, cfg.train_steps // 10),
                       seed=cfg.seed, rtt_loss_weight=RECIPE_RTT_LOSS_WEIGHT, log_every=max(1, cfg.train_steps // 4), ckpt_every=cfg.train_steps,
                       keep_checkpoints=1)  # fmt: skip
    evals = list(iter_eval_batches(heldout_dir, loader_cfg.scoring(), cfg.eval_batches))
    return train(model_config("tiny", max_len=cfg.seq_len), tcfg, lambda: make_train_iter(records_dir, loader_cfg),
                 ckpt_dir, NullTracker(), eval_batches=evals, progress=say)  # fmt: skip


def _median_rel_error(pred: np.ndarray, true: np.ndarray) -> float:
    return float(M.point_metrics(pred, true)["rel_p50"])


def run_experiment(
    splits_dir: str | Path,
    out_dir: str | Path,
    cfg: ExperimentConfig = ExperimentConfig(),  # noqa: B008 - frozen
    world=None,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Poison `<splits_dir>/train.parquet`, detect, clean, and compare models fitted on each; write under out_dir.

    Evaluation rows (successful ones, never poisoned): `heldout_probes`, and `future` rows of honest probes;
    "future_targeted" are those of them whose source prefix is a liar's or whose destination is the Sybil
    target (the pairs the lies are about). `world` (a SyntheticInternet) is
    optional and only used for a diagnostic: the share of deflated RTTs below the speed-of-light floor.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = pd.read_parquet(splits_dir / "train.parquet")
    heldout = pd.read_parquet(splits_dir / "heldout_probes.parquet")
    future = pd.read_parquet(splits_dir / "future.parquet")
    poisoned, truth = inject_poison(clean, cfg.poison, cfg.seed)
    say(f"poisoning: {truth.counts()}, {int((truth.row_kind != '').sum())} rows rewritten or added")
    metrics: dict = {"probes": truth.counts(), "rows_poisoned": int((truth.row_kind != "").sum()),
                     "rows": len(poisoned)}  # fmt: skip
    if world is not None:
        metrics["deflate_below_light_floor"] = _below_floor_share(poisoned, truth, world)

    # ---- detectors
    cons = consistency_scores(poisoned, cfg.consistency)
    scores = {"consistency": cons["score"]}
    paths = {"poisoned": _write_split(poisoned, out_dir / "splits" / "poisoned_train.parquet"),
             "heldout": _write_split(heldout, out_dir / "splits" / "heldout_probes.parquet")}  # fmt: skip
    rec_cfg = records.RecordsConfig(shards=1)
    rec = {k: out_dir / "records" / k for k in paths}
    for k, p in paths.items():
        records.write_probe_records(p, rec[k], rec_cfg)
    results = {}
    if cfg.train_steps > 0:
        from pingllm_core.model.checkpoint import load_checkpoint

        say("poisoning: training on the poisoned split")
        results["poisoned"] = _train_tiny(
            rec["poisoned"], rec["heldout"], out_dir / "checkpoints" / "poisoned", cfg, say
        )
        model, _, _ = load_checkpoint(out_dir / "checkpoints" / "poisoned")
        nll = nll_scores(model, rec["poisoned"], cfg.nll_contexts, cfg.seq_len, cfg.seed, say)
        scores["nll"] = nll["nll"].reindex(cons.index)
        scores["combined"] = rank_average({"nll": scores["nll"], "consistency": scores["consistency"]})
    else:
        nll = pd.DataFrame(index=cons.index)
        scores["combined"] = rank_average({"consistency": scores["consistency"]})
    scores = {k: scores[k] for k in DETECTORS if k in scores}
    metrics["detection"] = detection_table(scores, truth)

    # ---- cleaning
    comb = scores["combined"].sort_values(ascending=False)
    n_drop = int(round(cfg.drop_share * len(comb)))
    dropped = comb.index[:n_drop].to_numpy()
    lab_drop = truth.label_of(dropped)
    n_liars = int((truth.labels.label != HONEST).sum())
    metrics["cleaning"] = {"dropped": n_drop, "liars_dropped": int((lab_drop != HONEST).sum()),
                           "precision": float((lab_drop != HONEST).mean()) if n_drop else float("nan"),
                           "recall": float((lab_drop != HONEST).sum() / max(n_liars, 1))}  # fmt: skip
    cleaned = poisoned[~poisoned["prb_id"].isin(dropped)].reset_index(drop=True)

    # ---- accuracy: PrefixPairMedian (cheap) and the tiny model, on the same held-out rows
    liar_ids = truth.labels.loc[truth.labels.label != HONEST, "prb_id"].to_numpy()
    liar_sp = set(address_prefix(poisoned.loc[poisoned.prb_id.isin(liar_ids), "src_addr"].to_numpy(object)))
    fut_ok = future[future.rtt > 0].reset_index(drop=True)
    hel_ok = heldout[heldout.rtt > 0].reset_index(drop=True)
    fut_ok = fut_ok[~fut_ok.prb_id.isin(liar_ids)].reset_index(drop=True)  # honest sources only
    tgt = np.isin(address_prefix(fut_ok.src_addr.to_numpy(object)), list(liar_sp)) | (
        fut_ok.dst_addr.to_numpy(object) == truth.sybil_target
    )
    evals = {"heldout_probes": hel_ok, "future": fut_ok, "future_targeted": fut_ok[tgt]}
    train_sets = {"clean": clean, "poisoned": poisoned, "cleaned": cleaned}
    base = {}
    for name, ev in evals.items():
        base[name] = {}
        for s, tr in train_sets.items():
            b = PrefixPairMedian().fit(tr)
            pred = b.predict(ev.src_addr.to_numpy(object), ev.dst_addr.to_numpy(object), None)
            base[name][s] = _median_rel_error(pred, ev.rtt.to_numpy(np.float64))
    metrics["prefix_pair_median_rel_p50"] = base
    metrics["eval_rows"] = {k: len(v) for k, v in evals.items()}
    accuracy = {f"PPM {k}": v for k, v in base.items()}
    if cfg.train_steps > 0:
        paths["cleaned"] = _write_split(cleaned, out_dir / "splits" / "cleaned_train.parquet")
        rec["cleaned"] = out_dir / "records" / "cleaned"
        records.write_probe_records(paths["cleaned"], rec["cleaned"], rec_cfg)
        say("poisoning: training on the cleaned split")
        results["cleaned"] = _train_tiny(
            rec["cleaned"], rec["heldout"], out_dir / "checkpoints" / "cleaned", cfg, say
        )
        metrics["model_eval_loss"] = {k: float(r.eval_loss) for k, r in results.items()}
        rows = _model_eval_rows(evals, cfg)
        metrics["model_rel_p50"] = {}
        from pingllm_core.query.engine import QueryEngine

        for s in ("poisoned", "cleaned"):
            eng = QueryEngine.load(out_dir / "checkpoints" / s)
            pred = np.array(
                [
                    eng.predict(a, b, time=None).median
                    for a, b in zip(rows.src_addr, rows.dst_addr, strict=True)
                ]
            )
            metrics["model_rel_p50"][s] = _median_rel_error(pred, rows.rtt.to_numpy(np.float64))
        accuracy["tiny model"] = metrics["model_rel_p50"]
    metrics["seconds"] = time.perf_counter() - t0
    fig = fig_poisoning(scores, truth, accuracy, out_dir / "poisoning.png")

    table = cons.copy()
    table.insert(0, "label", truth.label_of(table.index.to_numpy()))
    for k, v in scores.items():
        table[f"score_{k}"] = v.reindex(table.index).to_numpy()
    for c in nll.columns:
        table[c] = nll[c].reindex(table.index).to_numpy()
    table["dropped"] = table.index.isin(dropped)
    table.to_csv(out_dir / "probe_scores.csv")
    (out_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
    return ExperimentResult(metrics, fig, table, metrics["seconds"])


def _model_eval_rows(evals: Mapping[str, pd.DataFrame], cfg: ExperimentConfig) -> pd.DataFrame:
    """Half targeted future rows, half held-out-probe rows (drawn with cfg.seed)."""
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for name, n in (
        ("future_targeted", cfg.model_rows // 2),
        ("heldout_probes", cfg.model_rows - cfg.model_rows // 2),
    ):
        ev = evals[name]
        if len(ev):
            parts.append(ev.iloc[np.sort(rng.choice(len(ev), size=min(n, len(ev)), replace=False))])
    return pd.concat(parts, ignore_index=True) if parts else evals["heldout_probes"].iloc[:0]


def _below_floor_share(df: pd.DataFrame, truth: PoisonTruth, world) -> float:
    """Ground-truth diagnostic: share of deflated RTTs below great-circle distance / 100 km per ms."""
    from pingllm_core.ingest.synth import FIBRE_KM_PER_MS
    from pingllm_core.ingest.synth_geo import great_circle_km

    sel = df[truth.row_kind == "deflate"]
    if sel.empty:
        return float("nan")
    nt = world.node_table()
    where = {ip: i for i, ip in enumerate(nt["ip"])}
    si = np.array([where.get(a, -1) for a in sel.src_addr], np.int64)
    di = np.array([where.get(a, -1) for a in sel.dst_addr], np.int64)
    ok = (si >= 0) & (di >= 0)
    if not ok.any():
        return float("nan")
    km = great_circle_km(nt["lat"][si[ok]], nt["lon"][si[ok]], nt["lat"][di[ok]], nt["lon"][di[ok]])
    return float(np.mean(sel.rtt.to_numpy()[ok] < km / FIBRE_KM_PER_MS))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and x != x:
        return None
    return x

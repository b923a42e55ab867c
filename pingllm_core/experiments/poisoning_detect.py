"""Poisoning, part 2: detectors and their scores against the truth.

Each detector is a per-probe suspicion score (higher = more suspicious); none of them reads the truth:

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

`detection_metrics` / `detection_table` score them against `PoisonTruth` (ROC-AUC, PR-AUC, TPR at 5% FPR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pingllm_core.data import records
from pingllm_core.evaluation.baselines import address_prefix
from pingllm_core.evaluation.metrics import tpr_at_fpr
from pingllm_core.experiments.poisoning_inject import HONEST, LIAR_KINDS, PoisonTruth

DETECTORS = ("nll", "consistency", "combined")


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

"""Poisoning, part 1: lies injected into a `train` split (threats T1-T4 of docs/decentralized.md).

- **inflate** (T1): a liar probe reports every successful RTT as `rtt * factor + offset`;
- **deflate** (T2): a liar reports `rtt * factor` with factor < 1 (often below the speed-of-light floor);
- **fake_dst** (T3): a liar rewrites a share of its rows to destinations in prefixes nobody uses, with
  RTTs drawn from its own RTT distribution (plausible numbers, non-existent pairs);
- **sybil** (T4): k new probe ids with new source addresses in one unused /24, all copying an honest
  template probe and all claiming the same lie: a popular target is `sybil_rtt_ms` away.

The truth (`PoisonTruth`) is kept for scoring only: no detector (poisoning_detect.py) reads it.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import numpy as np
import pandas as pd

from pingllm_core.evaluation.baselines import address_prefix

LIAR_KINDS = ("inflate", "deflate", "fake_dst", "sybil")
HONEST = "honest"


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


def used_prefixes(df: pd.DataFrame) -> set[str]:
    """Every /24 (IPv4) or /48 (IPv6) prefix that a source or destination address of `df` is in."""
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
    used = used_prefixes(df)
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

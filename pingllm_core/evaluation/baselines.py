"""Non-model RTT baselines (SPEC section 8), all fitted on the `train` split only.

One module: every baseline is a `Baseline` (one fit/predict contract, one global-median fallback) and
`fit_all_baselines` fits them together; apart, the base class and the registry would import each other.

Every baseline answers `predict(src, dst, time)` with a median RTT in ms (never NaN: each one falls
back to something coarser, ending at the global train median) and `predict_fail` with P(failure).
Inputs are measurement tables with columns event_time, src_addr, dst_addr, ip_version, rtt, prb_id;
rtt is ms and -1.0 marks a failed packet. Only successful rows (rtt > 0) feed RTT estimates.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod

import numpy as np
import pandas as pd

V4_PREFIX_LEN = 24  # IPv4 prefix length used for "same network" grouping
V6_PREFIX_LEN = 48  # IPv6 prefix length (a typical site allocation)
BATCHES_PER_PASS = 100  # Vivaldi / MF mini-batches per pass: a fixed count keeps fits in seconds at any size


def to_unix_seconds(values: object) -> np.ndarray:
    """Convert datetime64 (naive = UTC, or tz-aware) or integer seconds to int64 unix seconds."""
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if pd.api.types.is_datetime64_any_dtype(s):
        ts = pd.to_datetime(s, utc=True)
        return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    return s.to_numpy(np.int64)


def _one_prefix(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "?" + addr  # unparseable: its own group, never merged with real prefixes
    plen = V4_PREFIX_LEN if ip.version == 4 else V6_PREFIX_LEN
    return str(ipaddress.ip_network(f"{ip}/{plen}", strict=False))


def address_prefix(addrs: np.ndarray) -> np.ndarray:
    """Map addresses to their /24 (IPv4) or /48 (IPv6) prefix string, parsing each distinct address once."""
    uniq, inverse = np.unique(np.asarray(addrs, dtype=object).astype(str), return_inverse=True)
    prefixes = np.array([_one_prefix(a) for a in uniq], dtype=object)
    return prefixes[inverse.reshape(-1)]


def _codes(index: pd.Index, values: np.ndarray) -> np.ndarray:
    """Integer position of each value in `index`; -1 where unseen."""
    return index.get_indexer(np.asarray(values, dtype=object)).astype(np.int64)


class Baseline(ABC):
    """Common interface: fit on train rows, then predict median RTT (ms) and P(failure) for query rows."""

    name: str = "baseline"
    predicts_rtt: bool = True  # whether `predict` is this baseline's purpose
    predicts_failure: bool = False  # whether `predict_fail` is informative (else the global rate)

    def _fit_global(self, train_df: pd.DataFrame) -> pd.DataFrame:
        """Store the global median / failure rate and return the successful rows only."""
        rtt = train_df["rtt"].to_numpy(np.float64)
        ok = rtt > 0
        if not ok.any():
            raise ValueError("train has no successful RTT")
        self.global_median_ = float(np.median(rtt[ok]))
        self.global_fail_rate_ = float(np.mean(~ok))
        return train_df.loc[ok]

    @abstractmethod
    def fit(self, train_df: pd.DataFrame) -> Baseline:
        """Fit on the train split and return self."""

    @abstractmethod
    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (float64[n], never NaN)."""

    def predict_fail(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """P(failure) per query row; the global train failure rate unless a subclass knows better."""
        return np.full(len(src), self.global_fail_rate_, dtype=np.float64)


class GlobalMedian(Baseline):
    """The global median RTT of train; its failure prediction is the global base rate."""

    name = "global_median"
    predicts_failure = True  # the constant base-rate reference (AUC 0.5)

    def fit(self, train_df: pd.DataFrame) -> GlobalMedian:
        """Fit on the train split and return self."""
        self._fit_global(train_df)
        return self

    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (float64[n], never NaN)."""
        return np.full(len(src), self.global_median_, dtype=np.float64)


class _TimeTable:
    """Per-group time series of values; lookup returns the last value at or before a query time."""

    def __init__(self, group: np.ndarray, time: np.ndarray, value: np.ndarray) -> None:
        order = np.lexsort((time, group))
        self.group, self.time, self.value = group[order], time[order], value[order]
        self.t0 = int(self.time.min()) if len(self.time) else 0
        self.keys = self._key(self.group, self.time)

    def _key(self, group: np.ndarray, time: np.ndarray) -> np.ndarray:
        # group in the high bits, time offset (s, +1 so "before t0" maps to 0) in the low 33 bits
        off = np.clip(time.astype(np.int64) - self.t0 + 1, 0, (1 << 33) - 1)
        return (group.astype(np.int64) << 33) | off

    def lookup(self, group: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (value, found) for the last observation of `group` at or before `time`."""
        out = np.full(len(group), np.nan)
        if len(self.keys) == 0:
            return out, np.zeros(len(group), bool)
        pos = np.searchsorted(self.keys, self._key(np.maximum(group, 0), time), side="right") - 1
        pos_c = np.maximum(pos, 0)
        found = (group >= 0) & (pos >= 0) & (self.group[pos_c] == group)
        out[found] = self.value[pos_c[found]]
        return out, found


def _running_ema(group: np.ndarray, time: np.ndarray, value: np.ndarray, alpha: float) -> np.ndarray:
    """EMA of `value` within each group in time order, returned in the input row order."""
    order = np.lexsort((time, group))
    g, v = group[order].tolist(), value[order].tolist()
    ema = np.empty(len(v))
    prev_g, acc = None, 0.0
    for k in range(len(v)):  # sequential by nature; ~50 ms per 1e5 rows
        acc = v[k] if g[k] != prev_g else alpha * v[k] + (1.0 - alpha) * acc
        prev_g, ema[k] = g[k], acc
    out = np.empty_like(ema)
    out[order] = ema
    return out


class SourceLastSeen(Baseline):
    """Last successful RTT of the (src, dst) pair, else of the source (any dst), else the global median.

    Time-clean: the value used is the last one observed at or before the query time (a query earlier
    than all of a pair's train rows falls back as if unseen). With `time_clean=False` the last value in
    train is used regardless of the query time.
    """

    name = "source_last_seen"

    def __init__(self, time_clean: bool = True) -> None:
        self.time_clean = time_clean

    def _values(self, group: np.ndarray, time: np.ndarray, rtt: np.ndarray) -> np.ndarray:
        return rtt

    def fit(self, train_df: pd.DataFrame) -> SourceLastSeen:
        """Fit on the train split and return self."""
        ok = self._fit_global(train_df)
        src = ok["src_addr"].to_numpy(object)
        dst = ok["dst_addr"].to_numpy(object)
        time = to_unix_seconds(ok["event_time"])
        rtt = ok["rtt"].to_numpy(np.float64)
        self.src_index_, self.dst_index_ = pd.Index(pd.unique(src)), pd.Index(pd.unique(dst))
        s = _codes(self.src_index_, src)
        pair = s * len(self.dst_index_) + _codes(self.dst_index_, dst)  # dense pair id, fits int64
        self.pair_index_ = pd.Index(pd.unique(pair))
        p = _codes(self.pair_index_, pair)
        self.pair_table_ = _TimeTable(p, time, self._values(p, time, rtt))
        self.src_table_ = _TimeTable(s, time, self._values(s, time, rtt))
        return self

    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (float64[n], never NaN)."""
        latest = time is None or not self.time_clean  # no time given: use the last train value
        t = np.full(len(src), np.iinfo(np.int64).max >> 2) if latest else to_unix_seconds(time)
        s = _codes(self.src_index_, src)
        d = _codes(self.dst_index_, dst)
        pair = np.where((s >= 0) & (d >= 0), s * len(self.dst_index_) + d, -1)
        p = np.where(pair >= 0, _codes(self.pair_index_, pair), -1)
        out, found = self.pair_table_.lookup(p, t)
        by_src, found_src = self.src_table_.lookup(s, t)
        out = np.where(found, out, np.where(found_src, by_src, self.global_median_))
        return out.astype(np.float64)


class SourceEMA(SourceLastSeen):
    """Exponential moving average (in time order) of successful RTTs per pair, else per source, else global.

    `alpha` weighs the newest observation; the same time-clean rule as `SourceLastSeen` applies.
    """

    name = "source_ema"

    def __init__(self, alpha: float = 0.3, time_clean: bool = True) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        super().__init__(time_clean)
        self.alpha = alpha

    def _values(self, group: np.ndarray, time: np.ndarray, rtt: np.ndarray) -> np.ndarray:
        return _running_ema(group, time, rtt, self.alpha)


class PrefixPairMedian(Baseline):
    """Median RTT over train rows with the same src prefix and dst prefix; else dst prefix; else global."""

    name = "prefix_pair_median"

    def fit(self, train_df: pd.DataFrame) -> PrefixPairMedian:
        """Fit on the train split and return self."""
        ok = self._fit_global(train_df)
        frame = pd.DataFrame(
            {
                "sp": address_prefix(ok["src_addr"].to_numpy()),
                "dp": address_prefix(ok["dst_addr"].to_numpy()),
                "rtt": ok["rtt"].to_numpy(np.float64),
            }
        )
        self.pair_median_ = frame.groupby(["sp", "dp"])["rtt"].median()
        self.dst_median_ = frame.groupby("dp")["rtt"].median()
        return self

    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (float64[n], never NaN)."""
        sp, dp = address_prefix(src), address_prefix(dst)
        key = pd.MultiIndex.from_arrays([sp, dp])
        out = self.pair_median_.reindex(key).to_numpy(np.float64)
        by_dst = self.dst_median_.reindex(dp).to_numpy(np.float64)
        out = np.where(np.isnan(out), by_dst, out)
        return np.where(np.isnan(out), self.global_median_, out)


def _pair_medians(ok: pd.DataFrame, nodes: pd.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node codes (i, j) and median RTT (ms) of each distinct train (src, dst) pair."""
    frame = pd.DataFrame(
        {
            "i": _codes(nodes, ok["src_addr"].to_numpy(object)),
            "j": _codes(nodes, ok["dst_addr"].to_numpy(object)),
            "rtt": ok["rtt"].to_numpy(np.float64),
        }
    )
    med = frame.groupby(["i", "j"])["rtt"].median().reset_index()
    return med["i"].to_numpy(np.int64), med["j"].to_numpy(np.int64), med["rtt"].to_numpy(np.float64)


class _GraphBaseline(Baseline):
    """Shared plumbing for per-node models: node index, pair medians, prefix fallback for unseen nodes."""

    def _prepare(self, train_df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ok = self._fit_global(train_df)
        self.fallback_ = PrefixPairMedian().fit(train_df)
        addrs = np.concatenate([ok["src_addr"].to_numpy(object), ok["dst_addr"].to_numpy(object)])
        self.nodes_ = pd.Index(pd.unique(addrs))
        return _pair_medians(ok, self.nodes_)

    @abstractmethod
    def _node_predict(self, i: np.ndarray, j: np.ndarray) -> np.ndarray: ...

    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (float64[n], never NaN)."""
        i, j = _codes(self.nodes_, src), _codes(self.nodes_, dst)
        seen = (i >= 0) & (j >= 0)
        out = np.empty(len(i), np.float64)
        if seen.any():
            out[seen] = self._node_predict(i[seen], j[seen])
        if (~seen).any():
            out[~seen] = self.fallback_.predict(np.asarray(src)[~seen], np.asarray(dst)[~seen], None)
        bad = ~np.isfinite(out)
        out[bad] = self.global_median_
        return out


class Vivaldi(_GraphBaseline):
    """Vivaldi network coordinates (Dabek et al. 2004): 4-D Euclidean + height, adaptive timestep.

    Each pass visits the train pairs' median RTTs in random mini-batches; a node's moves within a batch
    are averaged (a batched form of the per-sample spring update). Predicted RTT (ms) is
    ||x_i - x_j|| + h_i + h_j. Nodes not seen in train fall back to `PrefixPairMedian`, then global.
    """

    name = "vivaldi"

    def __init__(
        self, dim: int = 4, passes: int = 30, cc: float = 0.25, ce: float = 0.25, seed: int = 0
    ) -> None:
        self.dim, self.passes, self.cc, self.ce, self.seed = dim, passes, cc, ce, seed

    def fit(self, train_df: pd.DataFrame) -> Vivaldi:
        """Fit on the train split and return self."""
        i_all, j_all, rtt_all = self._prepare(train_df)
        keep = i_all != j_all
        i_all, j_all, rtt_all = i_all[keep], j_all[keep], rtt_all[keep]
        n, rng = len(self.nodes_), np.random.default_rng(self.seed)
        scale = self.global_median_
        x = rng.normal(0.0, 0.5 * scale, (n, self.dim))  # spread start avoids the all-at-origin tie
        h = np.full(n, 0.05 * scale)  # small positive start so heights can grow multiplicatively
        err = np.ones(n)  # local relative error estimate, 1 = no confidence yet
        batch = -(-len(rtt_all) // BATCHES_PER_PASS)
        for _ in range(self.passes):
            order = rng.permutation(len(rtt_all))
            for lo in range(0, len(order), batch):
                b = order[lo : lo + batch]
                self._step(x, h, err, i_all[b], j_all[b], rtt_all[b], rng)
        self.x_, self.h_, self.err_ = x, h, err
        return self

    def _step(self, x, h, err, i, j, rtt, rng: np.random.Generator) -> None:
        """One batched Vivaldi update of both endpoints of each (i, j, rtt ms) sample, in place."""
        diff = x[i] - x[j]
        nv = np.linalg.norm(diff, axis=1)
        tie = nv < 1e-9  # coincident points: push apart in a random direction
        if tie.any():
            diff[tie] = rng.normal(size=(int(tie.sum()), x.shape[1])) * 1e-3
            nv[tie] = np.linalg.norm(diff[tie], axis=1)
        hs = h[i] + h[j]
        dist = nv + hs
        force = rtt - dist  # ms; positive pushes the pair apart
        rel = np.abs(dist - rtt) / rtt
        moves = []
        for a, b, sign in ((i, j, 1.0), (j, i, -1.0)):
            w = err[a] / (err[a] + err[b])  # trust a sample more when the other node is confident
            delta = self.cc * w * force / dist
            moves.append(np.c_[(sign * delta)[:, None] * diff, delta * hs, self.ce * w * (rel - err[a])])
        # a node in several samples of the batch moves by the mean of its updates
        mean = _scatter_mean(np.concatenate([i, j]), np.concatenate(moves), len(x))
        d = x.shape[1]
        x += mean[:, :d]
        h[:] = np.maximum(h + mean[:, d], 0.0)
        err[:] = np.clip(err + mean[:, d + 1], 1e-3, 1.5)

    def _node_predict(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self.x_[i] - self.x_[j], axis=1) + self.h_[i] + self.h_[j]


def _scatter_mean(idx: np.ndarray, vals_BxR: np.ndarray, n: int) -> np.ndarray:
    """Mean of the rows of `vals_BxR` per target index, as an [n, R] array (zero where none)."""
    r = vals_BxR.shape[1]
    flat = (idx[:, None] * r + np.arange(r)).ravel()
    sums = np.bincount(flat, weights=vals_BxR.ravel(), minlength=n * r).reshape(n, r)
    return sums / np.maximum(np.bincount(idx, minlength=n), 1)[:, None]


class MatrixFactorization(_GraphBaseline):
    """DMFSGD-style factorization RTT(i, j) ~ u_i . v_j with non-negative factors and L1 loss.

    Fitted on raw RTT divided by the train median (scale-free learning rate; predictions are converted
    back to ms), by mini-batch SGD with subgradient steps of the L1 loss plus L2 weight decay,
    projected onto u, v >= 0. `symmetric=True` also uses each pair as (dst, src), as RTT is symmetric.
    Unseen nodes fall back to `PrefixPairMedian`, then global.
    """

    name = "matrix_factorization"

    def __init__(
        self,
        rank: int = 10,
        epochs: int = 60,
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        symmetric: bool = True,
        seed: int = 0,
    ) -> None:
        self.rank, self.epochs, self.lr, self.weight_decay = rank, epochs, lr, weight_decay
        self.symmetric, self.seed = symmetric, seed

    def fit(self, train_df: pd.DataFrame) -> MatrixFactorization:
        """Fit on the train split and return self."""
        i, j, rtt = self._prepare(train_df)
        if self.symmetric:
            i, j, rtt = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([rtt, rtt])
        y = rtt / self.global_median_
        n, rng = len(self.nodes_), np.random.default_rng(self.seed)
        init = np.sqrt(1.0 / self.rank)  # u.v ~ 1 = the median at start
        u = rng.uniform(0.5, 1.5, (n, self.rank)) * init
        v = rng.uniform(0.5, 1.5, (n, self.rank)) * init
        batch = -(-len(y) // BATCHES_PER_PASS)
        for epoch in range(self.epochs):
            lr = self.lr / (1.0 + 10.0 * epoch / self.epochs)  # decay for the non-smooth L1 loss
            order = rng.permutation(len(y))
            for lo in range(0, len(order), batch):
                b = order[lo : lo + batch]
                bi, bj = i[b], j[b]
                ui, vj = u[bi], v[bj]
                g = np.sign(np.einsum("nr,nr->n", ui, vj) - y[b])[:, None]  # L1 subgradient
                # per-node mean of the batch's subgradients, so big batches do not overshoot
                u -= lr * _scatter_mean(bi, g * vj + self.weight_decay * ui, n)
                v -= lr * _scatter_mean(bj, g * ui + self.weight_decay * vj, n)
                np.maximum(u, 0.0, out=u)
                np.maximum(v, 0.0, out=v)
        self.u_, self.v_ = u, v
        return self

    def _node_predict(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.einsum("nr,nr->n", self.u_[i], self.v_[j]) * self.global_median_


class DestinationFailureRate(Baseline):
    """Per-destination failure rate, shrunk toward the global rate; unseen destinations get the global rate.

    Shrinkage adds `prior_weight` pseudo-packets at the global rate (keeps Brier sane for rare dsts).
    Its `predict` is the global median: RTT is not its purpose.
    """

    name = "destination_failure_rate"
    predicts_rtt = False
    predicts_failure = True

    def __init__(self, prior_weight: float = 1.0) -> None:
        self.prior_weight = prior_weight

    def fit(self, train_df: pd.DataFrame) -> DestinationFailureRate:
        """Fit on the train split and return self."""
        self._fit_global(train_df)
        failed = (train_df["rtt"].to_numpy(np.float64) <= 0).astype(np.float64)
        grp = pd.Series(failed).groupby(train_df["dst_addr"].to_numpy(object))
        fails, count = grp.sum(), grp.count()
        self.rate_ = (fails + self.prior_weight * self.global_fail_rate_) / (count + self.prior_weight)
        return self

    def predict(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Median RTT prediction in ms (the global median; float64[n])."""
        return np.full(len(src), self.global_median_, dtype=np.float64)

    def predict_fail(self, src: np.ndarray, dst: np.ndarray, time: np.ndarray) -> np.ndarray:
        """P(failure) per query row from the destination's train failure rate."""
        out = self.rate_.reindex(np.asarray(dst, dtype=object)).to_numpy(np.float64)
        return np.where(np.isnan(out), self.global_fail_rate_, out)


def fit_all_baselines(train_df: pd.DataFrame, seed: int = 0) -> dict[str, Baseline]:
    """Fit every SPEC section 8 baseline on the train split; keyed by baseline name."""
    models: list[Baseline] = [
        GlobalMedian(),
        SourceLastSeen(),
        SourceEMA(),
        PrefixPairMedian(),
        Vivaldi(seed=seed),
        MatrixFactorization(seed=seed),
        DestinationFailureRate(),
    ]
    return {m.name: m.fit(train_df) for m in models}

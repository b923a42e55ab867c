"""Per-row context sampling for the training loader (SPEC section 5): windows, timestamp modes, tokens.

Pure numpy, driven only by the `np.random.Generator` it is given, so Grain's per-index seeding makes
every context reproducible from (seed, epoch, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pingllm_core import tokens
from pingllm_core.records import ProbeRow

if TYPE_CHECKING:
    from pingllm_core.loader import LoaderConfig

MODE_FULL, MODE_NONE, MODE_MIXED = 0, 1, 2
MODE_NAMES = ("full", "none", "mixed")
_ABS_TIME_TOKENS = 9  # <TimestampAbs> + u64 for the first timestamped measurement
_DELTA_TIME_TOKENS = 2  # <TimestampDelta1> + 1 byte: the cheapest delta, so the target over- not under-shoots
_EST_SAMPLE = 512  # measurements sampled to estimate a large row's tokens per measurement
# Draw this many times the estimated count: a window richer in IPv4 or failures than the row's average
# still fills the context; the surplus is cut at the last whole measurement.
_OVERSHOOT = 1.25


@dataclass
class Context:
    """One sampled context: its tokens plus what produced them (for tests and stats)."""

    tokens: np.ndarray  # int32[T], T <= seq_len, whole measurements only
    mode: int  # MODE_FULL | MODE_NONE | MODE_MIXED
    n_meas: int  # measurements kept after truncation


def contexts_per_row(n: int, meas_per_k: int, max_contexts: int) -> int:
    """K = min(ceil(n / meas_per_k), max_contexts) contexts for a row of n measurements."""
    return max(1, min(math.ceil(n / meas_per_k), max_contexts))


def base_tokens_per_meas(row: ProbeRow, rng: np.random.Generator) -> float:
    """Mean tokens per measurement without the timestamp field (exact for small rows, sampled for big ones)."""
    idx = np.arange(row.n) if row.n <= _EST_SAMPLE else rng.integers(0, row.n, _EST_SAMPLE)
    # <MeasurementStart> 1; address field = marker + 4 or 16 bytes; result = <RttStart>+2 or <Failed>.
    src6 = row.src_table_v6[row.src_index[idx]].mean()
    dst6 = row.dst_table_v6[row.dst_rows(idx)].mean()
    ok = (row.rtt[idx] >= 0).mean()
    return float(1 + (5 + 12 * src6) + (5 + 12 * dst6) + (1 + 2 * ok))


def target_measurements(seq_len: int, base: float, time_share: float) -> int:
    """Measurements needed to (over)fill seq_len tokens, counting timestamps at their cheapest."""
    per_meas = base + _DELTA_TIME_TOKENS * time_share
    return max(1, math.ceil(_OVERSHOOT * (seq_len - _ABS_TIME_TOKENS * (time_share > 0)) / per_meas))


def sample_window(time: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Time-ordered indices: a log-uniform time window of a large row, subsampled to `target`."""
    n = len(time)
    if n <= target:
        return np.arange(n)
    span = float(time[-1] - time[0])
    if span > 0:
        # From the window that holds `target` measurements on average up to the whole row, log-uniform.
        w_min = span * target / n
        w = math.exp(rng.uniform(math.log(w_min), math.log(span))) if w_min < span else span
        t0 = time[0] + rng.uniform(0.0, span - w)
        a, b = np.searchsorted(time, [t0, t0 + w], side="left")
        b = max(b, a + 1)
    else:
        a, b = 0, n
    if b - a < target:
        # Too sparse a window: widen it around its centre to exactly `target` measurements.
        a = int(np.clip((a + b - target) // 2, 0, n - target))
        b = a + target
    if b - a == target:
        return np.arange(a, b)
    return a + np.sort(rng.choice(b - a, size=target, replace=False))


def order_for_mode(
    idx: np.ndarray, mode: int, mixed_keep: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(measurement order, has_time) for a time-ordered selection under a timestamp mode."""
    m = len(idx)
    if mode == MODE_FULL:
        return idx, np.ones(m, bool)
    if mode == MODE_NONE:
        return rng.permutation(idx), np.zeros(m, bool)
    n_keep = int(np.clip(round(rng.uniform(*mixed_keep) * m), 1, max(1, m - 1)))
    keep = np.zeros(m, bool)
    keep[rng.choice(m, size=n_keep, replace=False)] = True
    # Timed measurements keep their time order in random slots; the untimed ones fill the rest, shuffled.
    slots = np.zeros(m, bool)
    slots[rng.choice(m, size=n_keep, replace=False)] = True
    order = np.empty_like(idx)
    order[slots] = idx[keep]
    order[~slots] = rng.permutation(idx[~keep])
    return order, slots


def _plan_context(
    row: ProbeRow, rng: np.random.Generator, cfg: LoaderConfig, base: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """(mode, measurement order, has_time) of one context: mode draw, window, timestamp order."""
    u = rng.random()  # cheaper than rng.choice(p=...), which dominates for tiny draws
    mode = (
        MODE_FULL
        if u < cfg.mode_probs[0]
        else MODE_NONE
        if u < cfg.mode_probs[0] + cfg.mode_probs[1]
        else MODE_MIXED
    )
    time_share = (1.0, 0.0, sum(cfg.mixed_keep) / 2)[mode]
    idx = sample_window(row.time, target_measurements(cfg.seq_len, base, time_share), rng)
    order, has_time = order_for_mode(idx, mode, cfg.mixed_keep, rng)
    return mode, order, has_time


def encode_contexts(
    m: tokens.Measurements, has_time: np.ndarray, field_order: np.ndarray, new_context: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Encode several contexts in one vectorised pass; returns (int32 tokens, start of each measurement).

    Same language as `tokens.encode_measurements` applied to each context separately (tested equal):
    `new_context[i]` marks the first measurement of a context, where timestamps restart at <TimestampAbs>.
    Timestamped measurements must be in time order within their context.
    """
    n = len(m)
    buf = np.zeros((n, 4, 17), np.int32)  # per-field token blocks, padded to the widest (marker + 16 bytes)
    lens = np.zeros((n, 4), np.int64)
    for f, addr, v6, tok4, tok6 in (
        (tokens.FIELD_SRC, m.src, m.src_v6, tokens.SRC_IPV4, tokens.SRC_IPV6),
        (tokens.FIELD_DST, m.dst, m.dst_v6, tokens.DST_IPV4, tokens.DST_IPV6),
    ):
        buf[:, f, 0] = np.where(v6, tok6, tok4)
        buf[:, f, 1:] = addr + np.int32(tokens.BYTE0)
        lens[:, f] = np.where(v6, 17, 5)
    failed = m.rtt < 0
    codes = tokens.encode_rtt_ms(np.where(failed, 0.0, m.rtt)).astype(np.int32)
    r = tokens.FIELD_RESULT
    buf[:, r, 0] = np.where(failed, tokens.FAILED, tokens.RTT_START)
    buf[:, r, 1] = (codes >> 8) + tokens.BYTE0
    buf[:, r, 2] = (codes & 0xFF) + tokens.BYTE0
    lens[:, r] = np.where(failed, 1, 3)
    ti = np.flatnonzero(has_time)
    if len(ti):
        t, ctx = m.time[ti], (np.cumsum(new_context) - 1)[ti]
        first = np.ones(len(ti), bool)
        first[1:] = ctx[1:] != ctx[:-1]  # first timestamped measurement of its context
        delta = np.diff(t, prepend=t[:1])  # seconds since the previous timestamped one (same context)
        f = tokens.FIELD_TIME
        a = ti[first]
        buf[a, f, 0] = tokens.TIMESTAMP_ABS
        buf[a, f, 1:9] = t[first].astype(">u8").view(np.uint8).reshape(-1, 8) + np.int32(tokens.BYTE0)
        lens[a, f] = 9
        d, di = delta[~first], ti[~first]
        small = d < 256
        buf[di, f, 0] = np.where(small, tokens.TIMESTAMP_DELTA1, tokens.TIMESTAMP_DELTA4)
        buf[di[small], f, 1] = d[small] + tokens.BYTE0
        buf[di[~small], f, 1:5] = d[~small].astype(">u4").view(np.uint8).reshape(-1, 4) + np.int32(
            tokens.BYTE0
        )
        lens[di, f] = np.where(small, 2, 5)
    rows = np.arange(n)[:, None]
    order = field_order.astype(np.int64)
    blocks = buf[rows, order].reshape(n, 68)  # fields in each measurement's own order
    keep = (np.arange(17) < lens[rows, order][..., None]).reshape(n, 68)
    full = np.concatenate([np.full((n, 1), tokens.MEASUREMENT_START, np.int32), blocks], axis=1)
    mask = np.concatenate([np.ones((n, 1), bool), keep], axis=1)
    ends = np.cumsum(1 + lens.sum(axis=1))
    return full[mask], np.concatenate([[0], ends[:-1]]).astype(np.int64)


def _encode_plans(
    row: ProbeRow, plans: list[tuple[int, np.ndarray, np.ndarray]], rng: np.random.Generator, seq_len: int
) -> list[Context]:
    """Encode all planned contexts of a row at once, each cut after its last whole measurement in seq_len."""
    sizes = np.array([len(p[1]) for p in plans])
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.concatenate([p[1] for p in plans])
    has_time = np.concatenate([p[2] for p in plans])
    new_context = np.zeros(len(order), bool)
    new_context[first] = True
    # Each measurement gets its own random permutation of the four fields.
    field_order = rng.permuted(np.tile(np.arange(4, dtype=np.int8), (len(order), 1)), axis=1)
    toks, starts = encode_contexts(row.measurements(order), has_time, field_order, new_context)
    ends = np.append(starts[1:], len(toks))
    ctx_start = starts[first]
    fits = ends - np.repeat(ctx_start, sizes) <= seq_len  # a prefix of each context (ends increase)
    kept = np.bincount(np.repeat(np.arange(len(plans)), sizes), weights=fits, minlength=len(plans)).astype(
        np.int64
    )
    ctx_end = np.where(kept > 0, ends[first + np.maximum(kept, 1) - 1], ctx_start)
    return [
        Context(toks[a:b], p[0], int(k)) for a, b, k, p in zip(ctx_start, ctx_end, kept, plans, strict=True)
    ]


def sample_context(row: ProbeRow, rng: np.random.Generator, cfg: LoaderConfig, base: float) -> Context:
    """One context from a row: mode, window, order, shuffled fields, tokens cut to seq_len."""
    return _encode_plans(row, [_plan_context(row, rng, cfg, base)], rng, cfg.seq_len)[0]


def make_contexts(row: ProbeRow, rng: np.random.Generator, cfg: LoaderConfig) -> list[np.ndarray]:
    """The K token contexts (int32 arrays of at most seq_len tokens) that one row yields."""
    k = contexts_per_row(row.n, cfg.meas_per_k, cfg.max_contexts_per_row)
    base = base_tokens_per_meas(row, rng)
    plans = [_plan_context(row, rng, cfg, base) for _ in range(k)]
    return [c.tokens for c in _encode_plans(row, plans, rng, cfg.seq_len) if c.n_meas]

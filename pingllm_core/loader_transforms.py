"""Per-row context sampling for the training loader (SPEC section 5): windows, timestamp modes, tokens.

All contexts of a group of rows (K per row) are sampled and encoded together (`sample_rows`): the rows'
columns are concatenated, so numpy's per-call overhead is paid once per group, not once per row. There is
one generator call per kind of draw (modes, windows, subsamples, shuffles, field orders) across all
contexts, and one vectorised encoder pass that first computes every measurement's token count, cuts each
context after its last whole measurement in seq_len and only then writes the tokens of the measurements
that are kept. There is no Python loop per context or per measurement. Pure numpy, driven only by the
`np.random.Generator` it is given, so Grain's per-index seeding (one generator per group of rows, the
group index being a function of epoch and position) makes every context reproducible from (seed, epoch,
index) for a fixed group size.
"""

from __future__ import annotations

import itertools
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
_DRAW_FACTOR, _DRAW_EXTRA = 1.7, 8  # draws with replacement per distinct pick (see _subsample)

# ---------------------------------------------------------------------------------------------- layouts
# A measurement's tokens are a gather from its "value row" of _VW int16 columns:
#   0 <MeasurementStart> | 1..17 src marker + 16 bytes | 18..34 dst marker + 16 bytes
#   35..37 result marker + 2 RTT bytes | 38..46 time marker + up to 8 bytes
# Which columns, in which order, depends only on the layout: field order (24 permutations) x src family x
# dst family x failed x time kind (none / abs / delta1 / delta4) = 768 layouts, tabulated once.
_COL = {tokens.FIELD_SRC: 1, tokens.FIELD_DST: 18, tokens.FIELD_RESULT: 35, tokens.FIELD_TIME: 38}
_VW = 47  # value-row width = the longest measurement (1 + 17 + 17 + 3 + 9)
_TK_NONE, _TK_ABS, _TK_D1, _TK_D4 = 0, 1, 2, 3
_TIME_LEN = np.array([0, 9, 2, 5], np.int64)
_TIME_MARKER = np.array([0, tokens.TIMESTAMP_ABS, tokens.TIMESTAMP_DELTA1, tokens.TIMESTAMP_DELTA4], np.int16)
# Right shifts that put byte j of the big-endian value in the low byte, per time kind (unused ones are 0).
_TIME_SHIFT = np.array(
    [[0] * 8, [56, 48, 40, 32, 24, 16, 8, 0], [0] * 8, [24, 16, 8, 0, 0, 0, 0, 0]], np.int64
)
PERMS = np.array(list(itertools.permutations(range(4))), np.int8)  # int8[24, 4] field orders
_PERM_OF_CODE = np.full(256, -1, np.int64)  # base-4 code of a field order -> its row in PERMS
_PERM_OF_CODE[PERMS.astype(np.int64) @ np.array([64, 16, 4, 1])] = np.arange(24)


def _layout_tables() -> tuple[np.ndarray, np.ndarray]:
    cols = np.zeros((768, _VW), np.int64)
    lens = np.zeros(768, np.int64)
    for layout in range(768):
        tk, failed, dst6, src6, perm = (
            layout & 3,
            (layout >> 2) & 1,
            (layout >> 3) & 1,
            (layout >> 4) & 1,
            layout >> 5,
        )
        flen = {
            tokens.FIELD_SRC: 17 if src6 else 5,
            tokens.FIELD_DST: 17 if dst6 else 5,
            tokens.FIELD_RESULT: 1 if failed else 3,
            tokens.FIELD_TIME: int(_TIME_LEN[tk]),
        }
        c = [0] + [_COL[f] + j for f in PERMS[perm] for j in range(flen[int(f)])]
        cols[layout, : len(c)] = c
        lens[layout] = len(c)
    return cols, lens


_LAYOUT_COLS, _LAYOUT_LEN = _layout_tables()
_LAYOUT_OFF = np.cumsum(_LAYOUT_LEN) - _LAYOUT_LEN  # each layout's columns, concatenated in _FLAT_COLS
_FLAT_COLS = _LAYOUT_COLS[np.arange(_VW) < _LAYOUT_LEN[:, None]]


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
    if row.n <= _EST_SAMPLE:
        m, src6, dst6, rtt = (
            row.n,
            row.src_table_v6[row.src_index],
            row.dst_table_v6[row.dst_rows(slice(None))],
            row.rtt,
        )
    else:
        idx = rng.integers(0, row.n, _EST_SAMPLE)
        m, src6, dst6, rtt = (
            _EST_SAMPLE,
            row.src_table_v6[row.src_index[idx]],
            row.dst_table_v6[row.dst_rows(idx)],
            row.rtt[idx],
        )
    # <MeasurementStart> 1; address field = marker + 4 or 16 bytes; result = <RttStart>+2 or <Failed>.
    v6 = np.count_nonzero(src6) + np.count_nonzero(dst6)
    ok = np.count_nonzero(rtt >= 0)
    return float(1 + 5 + 5 + 1 + (12 * v6 + 2 * ok) / m)


def target_measurements(seq_len: int, base: float, time_share: np.ndarray) -> np.ndarray:
    """Measurements needed to (over)fill seq_len tokens, counting timestamps at their cheapest (per context)."""
    share = np.asarray(time_share, np.float64)
    need = _OVERSHOOT * (seq_len - _ABS_TIME_TOKENS * (share > 0)) / (base + _DELTA_TIME_TOKENS * share)
    return np.maximum(1, np.ceil(need)).astype(np.int64)


def _segment_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def _subsample(a: np.ndarray, b: np.ndarray, target: np.ndarray, rng: np.random.Generator):
    """Uniform subsets of min(target, b - a) positions of each window [a, b), in order, all contexts at once.

    Returns (positions int64[N], context of each position int64[N], count per context). A window of at
    most `target` is taken whole. Otherwise p positions are picked without replacement (p = target to
    keep; p = W - target to drop when that is fewer) as the first p distinct values of a stream of
    uniform draws with replacement; that is exactly sampling without replacement. The stream holds
    1.7 p + 8 draws; the rare context whose stream has too few distinct values uses `rng.choice`.
    """
    k = len(a)
    width = b - a
    counts = np.minimum(width, target)
    if (width <= target).all():  # every window whole (small rows)
        ctx = np.repeat(np.arange(k), width)
        return np.arange(len(ctx)) - (np.cumsum(width) - width)[ctx] + a[ctx], ctx, counts
    drop = width < 2 * target  # cheaper to pick the ones to drop (including nothing to drop)
    picks = np.where(drop, np.maximum(width - target, 0), target)
    draws = np.where(picks > 0, np.ceil(_DRAW_FACTOR * picks).astype(np.int64) + _DRAW_EXTRA, 0)
    dctx = np.repeat(np.arange(k), draws)
    dstart = _segment_starts(draws)
    r = (rng.random(len(dctx)) * width[dctx]).astype(np.int64)
    # One integer sort of (context, value, draw number) finds each value's first draw (np.unique with
    # return_index would need a stable argsort: several times slower on these sizes).
    bl, bw = int(draws.max()).bit_length(), int(width.max()).bit_length()
    if (k - 1).bit_length() + bw + bl > 62:
        raise ValueError(f"row too large to subsample: {k} contexts, window {width.max()}")
    local = np.arange(len(dctx)) - dstart[dctx]
    key = np.sort((((dctx << bw) | r) << bl) | local)
    val = key >> bl
    head = np.ones(len(key), bool)
    head[1:] = val[1:] != val[:-1]
    uniq, draw_of = val[head], dstart[val[head] >> bw] + (key[head] & ((1 << bl) - 1))
    is_first = np.zeros(len(dctx), bool)
    is_first[draw_of] = True
    seen = np.cumsum(is_first)  # distinct values seen so far, in draw order
    before = np.concatenate([[0], seen])[dstart]  # ... before each context's stream
    uctx = uniq >> bw
    chosen = seen[draw_of] - before[uctx] <= picks[uctx]  # among the first `picks` distinct draws
    cctx, cval = uctx[chosen], uniq[chosen] & ((1 << bw) - 1)
    short = np.flatnonzero(np.bincount(cctx, minlength=k) < picks)
    if len(short):  # too few distinct draws (rare): exact fallback for those contexts
        ok = ~np.isin(cctx, short)
        extra = [rng.choice(width[c], picks[c], replace=False) for c in short]
        cctx = np.concatenate([cctx[ok], np.repeat(short, picks[short])])
        cval = np.concatenate([cval[ok], *extra])
        o = np.lexsort((cval, cctx))
        cctx, cval = cctx[o], cval[o]
    if not drop.any():
        return cval + a[cctx], cctx, counts
    # Whole windows (dropping the chosen ones) for `drop` contexts, chosen values for the others.
    wsize = np.where(drop, width, 0)
    wstart = _segment_starts(wsize)
    wctx = np.repeat(np.arange(k), wsize)
    wpos = np.arange(len(wctx)) - wstart[wctx]
    mask = np.ones(len(wctx), bool)
    dsel = drop[cctx]
    mask[wstart[cctx[dsel]] + cval[dsel]] = False
    pctx = np.concatenate([wctx[mask], cctx[~dsel]])
    ppos = np.concatenate([wpos[mask], cval[~dsel]]) + a[pctx]
    if not drop.all():  # merge the two kinds back into context order
        key = np.sort((pctx << 40) | ppos)
        pctx, ppos = key >> 40, key & ((1 << 40) - 1)
    return ppos, pctx, counts


def _segment_shuffle(ctx: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permutation that shuffles the `which` elements within each context (others keep their order).

    One integer sort of (context, random bits, index); random bits are 0 where `which` is False.
    """
    n = len(ctx)
    bn, bc = max(n.bit_length(), 1), max(int(ctx[-1]).bit_length(), 1) if n else 1
    rbits = 62 - bn - bc
    r = (rng.bit_generator.random_raw(n) >> np.uint64(64 - rbits)).astype(np.int64) * which
    key = (((ctx << rbits) | r) << bn) | np.arange(n)
    return np.sort(key) & ((1 << bn) - 1)


def _order_for_modes(
    pos: np.ndarray,
    ctx: np.ndarray,
    counts: np.ndarray,
    mode: np.ndarray,
    mixed_keep: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(measurement order, has_time) of all contexts from their time-ordered selections.

    full: time order, all timestamped. none: shuffled, no timestamps. mixed: a uniform share in
    mixed_keep of the measurements keep timestamps and time order in uniformly random slots; the
    others fill the remaining slots, shuffled.
    """
    starts = _segment_starts(counts)
    emode = mode[ctx]
    shuffled = emode != MODE_FULL
    if not shuffled.any():
        return pos, np.ones(len(pos), bool)
    perm = _segment_shuffle(ctx, shuffled, rng)  # shuffle within none/mixed contexts, keep full ones
    has_time = emode == MODE_FULL
    mixed = emode == MODE_MIXED
    if mixed.any():
        n_keep = np.clip(
            np.rint(rng.uniform(*mixed_keep, len(counts)) * counts), 1, np.maximum(1, counts - 1)
        )
        o = _segment_shuffle(ctx, mixed, rng)
        rank = np.empty(len(pos), np.int64)
        rank[o] = np.arange(len(pos)) - starts[ctx[o]]
        has_time |= mixed & (rank < n_keep[ctx])
    order = pos[perm]
    slots = has_time[perm]
    order[slots] = pos[has_time]  # timestamped ones back in time order, in the slots they landed in
    return order, slots


# --------------------------------------------------------------------------------------------- encoding


def _addr_blocks(addr: np.ndarray, v6: np.ndarray, tok4: int, tok6: int) -> np.ndarray:
    """int16[n, 17] field blocks: family marker + 16 byte tokens."""
    out = np.empty((len(addr), 17), np.int16)
    out[:, 0] = np.where(v6, tok6, tok4)
    np.add(addr, np.int16(tokens.BYTE0), out=out[:, 1:], casting="unsafe")
    return out


def _time_kinds(
    time: np.ndarray, has_time: np.ndarray, new_context: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(time kind, value to write) per measurement: abs for a context's first timestamp, then deltas."""
    n = len(time)
    kind = np.zeros(n, np.int64)
    value = np.zeros(n, np.int64)
    ti = np.flatnonzero(has_time)
    if len(ti):
        t = time[ti]
        ctx = np.cumsum(new_context)[ti]
        first = np.ones(len(ti), bool)
        first[1:] = ctx[1:] != ctx[:-1]  # first timestamped measurement of its context
        delta = np.diff(t, prepend=t[:1])  # seconds since the previous timestamped one (same context)
        kind[ti] = np.where(first, _TK_ABS, np.where(delta < 256, _TK_D1, _TK_D4))
        value[ti] = np.where(first, t, delta)
    return kind, value


def _layouts(perm: np.ndarray, src6: np.ndarray, dst6: np.ndarray, failed: np.ndarray, kind: np.ndarray):
    return (((perm.astype(np.int64) * 2 + src6) * 2 + dst6) * 2 + failed) * 4 + kind


def _write_tokens(
    layout: np.ndarray,
    src_blk: np.ndarray,
    dst_blk: np.ndarray,
    rtt_ms: np.ndarray,
    kind: np.ndarray,
    value: np.ndarray,
) -> np.ndarray:
    """int32 tokens of measurements given their layouts and field values (concatenated, in order)."""
    n = len(layout)
    failed = rtt_ms < 0
    codes = tokens.encode_rtt_ms(np.where(failed, 0.0, rtt_ms)).astype(np.int64)
    v = np.empty((n, _VW), np.int16)
    v[:, 0] = tokens.MEASUREMENT_START
    v[:, 1:18] = src_blk
    v[:, 18:35] = dst_blk
    v[:, 35] = np.where(failed, tokens.FAILED, tokens.RTT_START)
    v[:, 36] = (codes >> 8) + tokens.BYTE0
    v[:, 37] = (codes & 0xFF) + tokens.BYTE0
    v[:, 38] = _TIME_MARKER[kind]
    v[:, 39:47] = ((value[:, None] >> _TIME_SHIFT[kind]) & 0xFF) + tokens.BYTE0
    # Token i of measurement j is column _FLAT_COLS[_LAYOUT_OFF[layout_j] + i] of value row j.
    size = _LAYOUT_LEN[layout]
    start = np.cumsum(size) - size
    k = np.repeat(_LAYOUT_OFF[layout] - start, size) + np.arange(int(size.sum()))
    rows = np.repeat(np.arange(0, n * _VW, _VW), size)
    return v.ravel()[rows + _FLAT_COLS[k]].astype(np.int32)


def encode_contexts(
    m: tokens.Measurements, has_time: np.ndarray, field_order: np.ndarray, new_context: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Encode several contexts in one vectorised pass; returns (int32 tokens, start of each measurement).

    Same language as `tokens.encode_measurements` applied to each context separately (tested equal):
    `new_context[i]` marks the first measurement of a context, where timestamps restart at <TimestampAbs>.
    Timestamped measurements must be in time order within their context.
    """
    perm = _PERM_OF_CODE[np.asarray(field_order, np.int64) @ np.array([64, 16, 4, 1])]
    if (perm < 0).any():
        raise ValueError("field_order rows must be permutations of the four field ids")
    kind, value = _time_kinds(m.time, np.asarray(has_time, bool), np.asarray(new_context, bool))
    failed = m.rtt < 0
    layout = _layouts(perm, m.src_v6, m.dst_v6, failed, kind)
    src_blk = _addr_blocks(m.src, m.src_v6, tokens.SRC_IPV4, tokens.SRC_IPV6)
    dst_blk = _addr_blocks(m.dst, m.dst_v6, tokens.DST_IPV4, tokens.DST_IPV6)
    toks = _write_tokens(layout, src_blk, dst_blk, m.rtt, kind, value)
    sizes = _LAYOUT_LEN[layout]
    return toks, np.cumsum(sizes) - sizes


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sample_rows(
    rows: list[ProbeRow], rng: np.random.Generator, cfg: LoaderConfig, k: np.ndarray | None = None
):
    """Sample and encode the contexts of several rows in one vectorised pass.

    The rows' columns are concatenated (table indices offset per row) and every step below runs once over
    all contexts of all rows: base token estimates, modes, windows, subsamples, orders, layouts, tokens.
    `k[r]` contexts come from row r (default K = min(ceil(n / meas_per_k), max_contexts)).
    Returns (flat int32 tokens, tokens per context, mode per context, measurements per context, k).
    """
    nr = len(rows)
    ns = np.array([r.n for r in rows], np.int64)
    if k is None:
        k = np.clip(-(-ns // cfg.meas_per_k), 1, cfg.max_contexts_per_row)
    rs = np.cumsum(ns) - ns  # first measurement of each row in the concatenation
    time = _concat([r.time for r in rows])
    rtt = _concat([r.rtt for r in rows])
    ksrc = np.array([len(r.src_table_v6) for r in rows], np.int64)
    kdst = np.array([len(r.dst_table_v6) for r in rows], np.int64)
    rowid = np.repeat(np.arange(nr), ns) if nr > 1 else None
    src_i = _concat([r.src_index for r in rows]).astype(np.int64)
    dst_i = _concat([np.arange(r.n) if r.dst_index is None else r.dst_index for r in rows]).astype(np.int64)
    if nr > 1:
        src_i += np.repeat(np.cumsum(ksrc) - ksrc, ns)
        dst_i += np.repeat(np.cumsum(kdst) - kdst, ns)
    src_tab, src6_tab = _concat([r.src_table for r in rows]), _concat([r.src_table_v6 for r in rows])
    dst_tab, dst6_tab = _concat([r.dst_table for r in rows]), _concat([r.dst_table_v6 for r in rows])
    # Mean tokens per measurement without timestamps, per row: exact up to _EST_SAMPLE, sampled above.
    m_est = np.minimum(ns, _EST_SAMPLE)
    er = np.repeat(np.arange(nr), m_est)
    local = np.arange(len(er)) - np.repeat(np.cumsum(m_est) - m_est, m_est)
    big_row = ns > _EST_SAMPLE
    if big_row.any():
        local = np.where(big_row[er], (rng.random(len(er)) * ns[er]).astype(np.int64), local)
    gi = rs[er] + local
    w = 12 * (src6_tab[src_i[gi]].astype(np.int64) + dst6_tab[dst_i[gi]]) + 2 * (rtt[gi] >= 0)
    base = 12.0 + np.bincount(er, weights=w, minlength=nr) / m_est
    # Contexts.
    kk = int(k.sum())
    crow = np.repeat(np.arange(nr), k)
    u = rng.random(kk)  # modes (cheaper than rng.choice(p=...))
    p_full, p_none = cfg.mode_probs[0], cfg.mode_probs[0] + cfg.mode_probs[1]
    mode = (u >= p_full).astype(np.int64) + (u >= p_none)
    share = np.array([1.0, 0.0, sum(cfg.mixed_keep) / 2])[mode]
    target = target_measurements(cfg.seq_len, base[crow], share)
    a, b = _windows_multi(time, rowid, rs, ns, crow, target, rng)
    pos, ctx, counts = _subsample(a, b, target, rng)
    order, has_time = _order_for_modes(pos, ctx, counts, mode, cfg.mixed_keep, rng)
    starts = _segment_starts(counts)
    new_context = np.zeros(len(order), bool)
    new_context[starts] = True
    kind, value = _time_kinds(time[order], has_time, new_context)
    perm = rng.integers(0, len(PERMS), len(order))  # each measurement gets its own random field order
    s = src_i[order]
    d = dst_i[order]
    rt = rtt[order]
    src6, dst6 = src6_tab[s], dst6_tab[d]
    layout = _layouts(perm, src6, dst6, rt < 0, kind)
    # Cut each context after its last whole measurement within seq_len, before writing any token.
    size = _LAYOUT_LEN[layout]
    end = np.cumsum(size)
    ctx_base = (end - size)[starts]
    fits = end - ctx_base[ctx] <= cfg.seq_len  # a prefix of each context (sizes are positive)
    kept = np.bincount(ctx[fits], minlength=kk)
    ctx_tokens = np.bincount(ctx[fits], weights=size[fits], minlength=kk).astype(np.int64)
    sel = np.flatnonzero(fits)
    s, d = s[sel], d[sel]
    toks = _write_fields(
        layout[sel],
        src_tab[s],
        src6[sel],
        dst_tab[d],
        dst6[sel],
        rt[sel].astype(np.float64),
        kind[sel],
        value[sel],
    )
    return toks, ctx_tokens, mode, kept, k


def _windows_multi(time, rowid, rs, ns, crow, target, rng):
    """[a, b) per context in the concatenation: a log-uniform time window of its row (whole if small)."""
    kk = len(target)
    n_c, s_c = ns[crow], rs[crow]
    a, b = s_c.copy(), s_c + n_c
    big = target < n_c
    if not big.any():
        return a, b
    first = time[rs]
    span_r = (time[rs + ns - 1] - first).astype(np.float64)
    span = span_r[crow]
    r = rng.random((2, kk))
    sel = big & (span > 0)
    if sel.any():
        sp, tg, cr = span[sel], target[sel], crow[sel]
        lo = np.log(sp * tg / n_c[sel])
        w = np.exp(lo + r[0, sel] * (np.log(sp) - lo))
        t0 = r[1, sel] * (sp - w)
        # Times relative to their row's first, rows shifted apart by 2**40 s: one sorted key array.
        key = time - first[rowid] + (rowid << 40) if rowid is not None else time - first
        q = np.ceil(np.concatenate([t0, t0 + w])).astype(np.int64) + np.tile(cr << 40, 2)
        ab = np.searchsorted(key, q, side="left")
        m = len(t0)
        a[sel], b[sel] = ab[:m], np.maximum(ab[m:], ab[:m] + 1)
    # Too sparse a window: widen it around its centre to exactly `target` measurements.
    sparse = big & (b - a < target)
    t, lo_, hi_ = target[sparse], s_c[sparse], s_c[sparse] + n_c[sparse]
    a[sparse] = np.clip((a[sparse] + b[sparse] - t) // 2, lo_, hi_ - t)
    b[sparse] = a[sparse] + t
    return a, b


def _write_fields(layout, src, src6, dst, dst6, rtt_ms, kind, value) -> np.ndarray:
    """int32 tokens of measurements from raw address bytes (uint8[n,16]) and family flags."""
    n = len(layout)
    failed = rtt_ms < 0
    codes = tokens.encode_rtt_ms(np.where(failed, 0.0, rtt_ms)).astype(np.int64)
    v = np.empty((n, _VW), np.int16)
    v[:, 0] = tokens.MEASUREMENT_START
    v[:, 1] = np.where(src6, tokens.SRC_IPV6, tokens.SRC_IPV4)
    np.add(src, np.int16(tokens.BYTE0), out=v[:, 2:18], casting="unsafe")
    v[:, 18] = np.where(dst6, tokens.DST_IPV6, tokens.DST_IPV4)
    np.add(dst, np.int16(tokens.BYTE0), out=v[:, 19:35], casting="unsafe")
    v[:, 35] = np.where(failed, tokens.FAILED, tokens.RTT_START)
    v[:, 36] = (codes >> 8) + tokens.BYTE0
    v[:, 37] = (codes & 0xFF) + tokens.BYTE0
    v[:, 38] = _TIME_MARKER[kind]
    v[:, 39:47] = ((value[:, None] >> _TIME_SHIFT[kind]) & 0xFF) + tokens.BYTE0
    return _gather_layout(v, layout)


def _gather_layout(v: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """Token i of measurement j is column _FLAT_COLS[_LAYOUT_OFF[layout_j] + i] of value row j."""
    n = len(layout)
    size = _LAYOUT_LEN[layout]
    start = np.cumsum(size) - size
    k = np.repeat(_LAYOUT_OFF[layout] - start, size) + np.arange(int(size.sum()))
    rows = np.repeat(np.arange(0, n * _VW, _VW), size)
    return v.ravel()[rows + _FLAT_COLS[k]].astype(np.int32)


def sample_context(
    row: ProbeRow, rng: np.random.Generator, cfg: LoaderConfig, base: float | None = None
) -> Context:
    """One context from a row: mode, window, order, shuffled fields, tokens cut to seq_len.

    `base` is accepted for compatibility and ignored: `sample_rows` estimates tokens per measurement itself.
    """
    toks, _, mode, kept, _ = sample_rows([row], rng, cfg, np.ones(1, np.int64))
    return Context(toks, int(mode[0]), int(kept[0]))


def make_contexts(row: ProbeRow, rng: np.random.Generator, cfg: LoaderConfig) -> list[np.ndarray]:
    """The K token contexts (int32 arrays of at most seq_len tokens) that one row yields."""
    toks, sizes, _, _, _ = sample_rows([row], rng, cfg)
    ends = np.cumsum(sizes).tolist()
    return [toks[e - s : e] for s, e in zip(sizes.tolist(), ends, strict=True) if s]

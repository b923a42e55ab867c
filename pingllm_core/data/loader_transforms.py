"""Per-row context sampling for the training loader (SPEC section 5): windows, timestamp modes, tokens.

One module: `sample_rows` runs every sampler below (windows, subsamples, timestamp orders, source remapping,
short contexts) over all contexts of a group at once, on flat index arrays whose conventions these helpers
share; the token writer it ends with is loader_encode.py's.

All contexts of a group of rows (K per row) are sampled and encoded together (`sample_rows`): the rows'
columns are concatenated, so numpy's per-call overhead is paid once per group, not once per row. There is
one generator call per kind of draw (modes, windows, subsamples, shuffles, field orders) across all
contexts, and one vectorised encoder pass that first computes every measurement's token count, cuts each
context after its last whole measurement in seq_len and only then writes the tokens of the measurements
that are kept, one kind of field at a time (loader_encode.py: each field one copied run of tokens). There
is no Python loop per context or per measurement (only per row, and per context in a rare exact fallback
of the subsampler). Costs scale with the sampled measurements, not with row or window sizes, beyond
concatenating the rows' columns. Pure numpy, driven only by the
`np.random.Generator` it is given, so Grain's per-index seeding (one generator per group of rows, the
group index being a function of epoch and position) makes every context reproducible from (seed, epoch,
index) for a fixed group size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.data.loader_encode import (
    LAST_FIELD_PERMS,
    LAYOUT_LEN,
    PERMS,
    QUERY_PERM,
    layouts,
    nonzero,
    time_kinds,
    write_tokens,
)
from pingllm_core.data.records import ProbeRow

MODE_FULL, MODE_NONE, MODE_MIXED = 0, 1, 2
MODE_NAMES = ("full", "none", "mixed")
_ABS_TIME_TOKENS = 9  # <TimestampAbs> + u64 for the first timestamped measurement
_DELTA_TIME_TOKENS = 2  # <TimestampDelta1> + 1 byte: the cheapest delta, so the target over- not under-shoots
_EST_SAMPLE = 512  # measurements sampled to estimate a large row's tokens per measurement
# Draw this many times the estimated count: a window richer in IPv4 or failures than the row's average
# still fills the context; the surplus is cut at the last whole measurement.
_OVERSHOOT = 1.25
_DRAW_SDS = 4.0  # draws with replacement per context: mean + this many sd of those needed (see _subsample)
SHORT_CONTEXT_MAX = 8  # a short context holds 1 .. this many measurements (LoaderConfig.short_context_share)
_DENSE_SLOTS_PER_DRAW = 64  # _first_occurrences: dense array up to this many window slots per draw, else sort


@dataclass
class Context:
    """One sampled context: its tokens plus what produced them (for tests and stats)."""

    tokens: np.ndarray  # int32[T], T <= seq_len, whole measurements only
    mode: int  # MODE_FULL | MODE_NONE | MODE_MIXED
    n_meas: int  # measurements kept after truncation


def contexts_per_row(n: np.ndarray, meas_per_k: int, max_contexts: int) -> np.ndarray:
    """K = min(ceil(n / meas_per_k), max_contexts), at least 1, for rows of n measurements (elementwise)."""
    return np.minimum(np.maximum(-(-np.asarray(n) // meas_per_k), 1), max_contexts)


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
    """Exclusive cumulative sum: where each segment of the given sizes starts."""
    return sizes.cumsum() - sizes


def _subsample(a: np.ndarray, b: np.ndarray, target: np.ndarray, rng: np.random.Generator):
    """Uniform subsets of min(target, b - a) positions of each window [a, b), in order, all contexts at once.

    Returns (positions int64[N], context int64[N], count per context, corder): the contexts come out in
    the order `corder` (a permutation of the input contexts: those whose windows drop values first), and
    `context` / `count` number them in that order. A window of at most `target` is taken whole.
    Otherwise p values are picked without replacement (p = target to keep, or p = W - target to drop
    when that is fewer) as the first p distinct values of a stream of uniform draws with replacement,
    which is exactly sampling without replacement. Each context's stream holds the mean plus _DRAW_SDS
    standard deviations of the draws needed (coupon collector); the rare context whose stream has too
    few distinct values is redrawn with `rng.choice` (whether that happens does not depend on which values
    were drawn, so the result stays uniform).

    The windows are laid end to end in a "window space" (in `corder`); `_first_occurrences` finds each
    value's first draw; a mask over the dropping windows gives what they keep; only the picked values are
    sorted. Work and memory are O(draws + dropping windows), whatever the window widths.
    """
    k = len(a)
    width = b - a
    if (width <= target).all():  # every window whole (small rows)
        ctx = np.repeat(np.arange(k), width)
        return np.arange(len(ctx)) + (a - _segment_starts(width)).take(ctx), ctx, width, np.arange(k)
    drop = width < 2 * target  # cheaper to pick the ones to drop (whole windows drop nothing)
    corder = np.concatenate([nonzero(drop), nonzero(~drop)])
    a, width, target, drop = a.take(corder), width.take(corder), target.take(corder), drop.take(corder)
    counts = np.minimum(width, target)
    picks = np.where(drop, width - counts, counts)
    wstart = _segment_starts(width)  # each window in the window space
    # Draws to see `picks` distinct of `width` values (x = picks / width <= 1/2): mean -W ln(1 - x),
    # variance W (ln(1 - x) + x / (1 - x)).
    x = picks / width
    lg = np.log1p(-x)
    sd = np.sqrt(np.maximum(width * (lg + x / (1 - x)), 0.0))
    draws = np.ceil(-width * lg + _DRAW_SDS * sd).astype(np.int64) + 2
    draws = np.where(picks > 0, np.maximum(draws, picks), 0)
    dctx = np.repeat(np.arange(k), draws)
    g = (rng.random(len(dctx)) * width.take(dctx)).astype(np.int64)
    g += wstart.take(dctx)
    first = _first_occurrences(g, int(wstart[-1] + width[-1]))  # in draw order
    fctx = dctx.take(first)
    distinct = np.bincount(fctx, minlength=k)
    kept = nonzero(np.arange(len(first)) < (_segment_starts(distinct) + picks).take(fctx))
    chosen = g.take(first.take(kept))
    short = nonzero(distinct < picks)
    if len(short):  # too few distinct draws (rare): exact fallback for those contexts
        ok = nonzero(~np.isin(fctx.take(kept), short))
        extra = [rng.choice(width[c], picks[c], replace=False) + wstart[c] for c in short]
        chosen = np.concatenate([chosen.take(ok), *extra])
    chosen.sort()  # each context's values ascending; the dropping contexts' first
    m = int(picks[drop].sum())
    mask = np.ones(int(width[drop].sum()), bool)  # the dropping windows, whole ...
    mask[chosen[:m]] = False  # ... less what they drop
    ctx = np.repeat(np.arange(k), counts)
    pos = np.concatenate([nonzero(mask), chosen[m:]]) + (a - wstart).take(ctx)
    return pos, ctx, counts, corder


def _first_occurrences(g: np.ndarray, span: int) -> np.ndarray:
    """Indices (ascending) of the elements of g (values in [0, span)) that are the first of their value.

    A dense slot -> first-index array (`np.minimum.at`, no sort) while the value space is small next to
    g; else one sort of (value, index) keys, so that huge windows cost neither memory nor page faults.
    """
    n = len(g)
    if n == 0:
        return np.zeros(0, np.int64)
    if span <= _DENSE_SLOTS_PER_DRAW * n:
        ids = np.arange(n, dtype=np.int32)
        owner = np.empty(span, np.int32)  # only the slots drawn are written and read
        owner[g] = n
        np.minimum.at(owner, g, ids)
        return nonzero(owner.take(g) == ids)
    bits = max(n.bit_length(), 1)
    if span.bit_length() + bits > 63:
        raise ValueError(f"windows too large to subsample: {span} slots, {n} draws")
    key = g << bits
    key |= np.arange(n)
    key.sort()
    head = np.empty(n, bool)  # first key of each run of equal values
    head[0] = True
    np.not_equal(key[1:] >> bits, key[:-1] >> bits, out=head[1:])
    first = np.zeros(n, bool)
    first[key[head] & ((1 << bits) - 1)] = True
    return nonzero(first)


def _segment_elements(starts: np.ndarray, counts: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Indices of the elements of contexts `which` (segments starts[c] .. starts[c] + counts[c]), grouped."""
    sizes = counts.take(which)
    return np.arange(int(sizes.sum())) + np.repeat(starts.take(which) - _segment_starts(sizes), sizes)


def _segment_shuffle(sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permutation of range(sum(sizes)) that shuffles uniformly within each segment of the given sizes.

    One integer sort of (segment, random bits, index) keys (ties in the random bits, rare, keep index order).
    """
    n = int(sizes.sum())
    bn, bs = max(n.bit_length(), 1), max(len(sizes).bit_length(), 1)
    rbits = 63 - bn - bs
    key = (rng.bit_generator.random_raw(n) >> np.uint64(64 - rbits)).view(np.int64)
    key |= np.repeat(np.arange(len(sizes)), sizes) << rbits
    key <<= bn
    key |= np.arange(n)
    key.sort()
    return key & ((1 << bn) - 1)


def _order_for_modes(
    pos: np.ndarray,
    counts: np.ndarray,
    mode: np.ndarray,
    mixed_keep: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(measurement order, has_time) of all contexts from their time-ordered selections (context-major).

    full: time order, all timestamped. none: shuffled, no timestamps. mixed: a uniform share in
    mixed_keep of the measurements keep timestamps and time order in uniformly random slots; the
    others fill the remaining slots, shuffled. (A uniform subset keeps its timestamps; a uniform shuffle
    of all decides which slots the timestamped ones take, and they are then put back in time order.)
    Only the elements of none / mixed contexts are shuffled, and only those of mixed ones ranked.
    """
    full = mode == MODE_FULL
    if full.all():
        return pos, np.ones(len(pos), bool)
    starts = _segment_starts(counts)
    has_time = np.repeat(full, counts)  # per output slot
    sh = nonzero(~full)
    slots = _segment_elements(starts, counts, sh)  # slots of the shuffled contexts = their inputs
    src = slots.take(_segment_shuffle(counts.take(sh), rng))  # input element landing in each slot
    order = pos.copy()
    order[slots] = pos.take(src)
    mx = nonzero(mode == MODE_MIXED)
    if len(mx):
        cm = counts.take(mx)
        n_keep = np.clip(np.rint(rng.uniform(*mixed_keep, len(mx)) * cm), 1, np.maximum(1, cm - 1))
        n_keep = n_keep.astype(np.int64)
        # The first n_keep of a uniform shuffle of each mixed context keep their timestamps.
        first = np.arange(int(n_keep.sum())) + np.repeat(
            _segment_starts(cm) - _segment_starts(n_keep), n_keep
        )
        keeps = _segment_elements(starts, counts, mx).take(_segment_shuffle(cm, rng).take(first))
        timed = np.zeros(len(pos), bool)
        timed[keeps] = True
        landed = timed.take(src)  # the slots where they landed
        has_time[slots] = landed
        # Back in time order in those slots: slots and inputs both ascend within each context.
        order[slots.take(nonzero(landed))] = pos.take(nonzero(timed))
    return order, has_time


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sample_rows(
    rows: list[ProbeRow], rng: np.random.Generator, cfg: LoaderConfig, k: np.ndarray | None = None
):
    """Sample and encode the contexts of several rows in one vectorised pass.

    The rows' columns are concatenated and every step below runs once over all contexts of all rows:
    base token estimates, modes, windows, subsamples, orders, layouts, tokens. Table indices stay local
    to their row; the row's table offset is added only for the measurements actually used.
    `k[r]` contexts come from row r (default K = min(ceil(n / meas_per_k), max_contexts)).
    Returns (flat int32 tokens, tokens per context, mode per context, measurements per context, k); the
    contexts come in the order `_subsample` puts them (not grouped by row).
    """
    nr = len(rows)
    ns = np.array([r.n for r in rows], np.int64)
    if k is None:
        k = contexts_per_row(ns, cfg.meas_per_k, cfg.max_contexts_per_row)
    rs = _segment_starts(ns)  # first measurement of each row in the concatenation
    time = _concat([r.time for r in rows])
    rtt = _concat([r.rtt for r in rows])
    src_l = _concat([r.src_index for r in rows])  # row-local table indices
    dst_l = _concat([np.arange(r.n, dtype=np.uint32) if r.dst_index is None else r.dst_index for r in rows])
    src_off = _segment_starts(np.array([len(r.src_table_v6) for r in rows], np.int64))
    dst_off = _segment_starts(np.array([len(r.dst_table_v6) for r in rows], np.int64))
    src_tab, src6_tab = _concat([r.src_table for r in rows]), _concat([r.src_table_v6 for r in rows])
    dst_tab, dst6_tab = _concat([r.dst_table for r in rows]), _concat([r.dst_table_v6 for r in rows])
    # Mean tokens per measurement without timestamps, per row: exact up to _EST_SAMPLE, sampled above.
    # <MeasurementStart> 1; address field = marker + 4 or 16 bytes; result = <RttStart>+2 or <Failed>.
    m_est = np.minimum(ns, _EST_SAMPLE)
    est_start = _segment_starts(m_est)
    er = np.repeat(np.arange(nr), m_est)
    gi = np.arange(len(er)) - est_start.take(er)  # every measurement of a small row ...
    big_row = ns > _EST_SAMPLE
    if big_row.any():  # ... random ones of a big row
        gi = np.where(big_row.take(er), (rng.random(len(er)) * ns.take(er)).astype(np.int64), gi)
    gi += rs.take(er)
    w = np.add(
        src6_tab.take(src_l.take(gi) + src_off.take(er)),
        dst6_tab.take(dst_l.take(gi) + dst_off.take(er)),
        dtype=np.int16,
    )
    w *= 6
    w += rtt.take(gi) >= 0
    base = 12.0 + np.add.reduceat(w, est_start, dtype=np.int64) * 2 / m_est
    # Contexts.
    kk = int(k.sum())
    crow = np.repeat(np.arange(nr), k)
    u = rng.random(kk)  # modes (cheaper than rng.choice(p=...))
    p_full, p_none = cfg.mode_probs[0], cfg.mode_probs[0] + cfg.mode_probs[1]
    mode = (u >= p_full).astype(np.int64) + (u >= p_none)
    share = np.array([1.0, 0.0, sum(cfg.mixed_keep) / 2])[mode]
    target = target_measurements(cfg.seq_len, base.take(crow), share)
    if cfg.short_context_share > 0:  # a few measurements only: the model learns to answer with little context
        short = nonzero(rng.random(kk) < cfg.short_context_share)
        target[short] = np.minimum(target.take(short), rng.integers(1, SHORT_CONTEXT_MAX + 1, len(short)))
    a, b = _windows_multi(rows, time, rs, ns, crow, target, rng)
    pos, ctx, counts, corder = _subsample(a, b, target, rng)
    mode, crow = mode.take(corder), crow.take(corder)  # contexts in the order _subsample gives them
    order, has_time = _order_for_modes(pos, counts, mode, cfg.mixed_keep, rng)
    kind, value = time_kinds(time.take(order), has_time, ctx)
    if cfg.field_orders == "last_field":  # a shuffled measurement puts one field last, the others first
        perm = LAST_FIELD_PERMS.take(rng.integers(0, len(LAST_FIELD_PERMS), len(order)))
    else:
        perm = rng.integers(0, len(PERMS), len(order), dtype=np.int16)  # a random field order per measurement
    if cfg.field_shuffle_share < 1.0:  # the others keep the query order
        perm[rng.random(len(order)) >= cfg.field_shuffle_share] = QUERY_PERM
    erow = crow.take(ctx)
    s = src_l.take(order) + src_off.take(erow)
    if cfg.src_remap_share > 0:
        src_tab, src6_tab, s = _remap_sources(
            src_tab, src6_tab, s, ctx, len(counts), cfg.src_remap_share, rng
        )
    d = dst_l.take(order) + dst_off.take(erow)
    rt = rtt.take(order)
    src6, dst6 = src6_tab.take(s), dst6_tab.take(d)
    layout = layouts(perm, src6, dst6, rt < 0, kind)
    # Cut each context after its last whole measurement within seq_len, before writing any token: the
    # token ends are increasing, so one search per context finds its cut.
    size = LAYOUT_LEN.take(layout)
    end = np.cumsum(size)
    starts = _segment_starts(counts)
    ctx_base = end.take(starts) - size.take(starts)
    cut = np.minimum(np.searchsorted(end, ctx_base + cfg.seq_len, side="right"), starts + counts)
    kept = cut - starts  # >= 1: a measurement is at most 47 tokens
    ctx_tokens = end.take(cut - 1) - ctx_base
    sel = np.arange(int(kept.sum())) + np.repeat(starts - _segment_starts(kept), kept)
    toks = write_tokens(
        layout.take(sel),
        s.take(sel),
        src_tab,
        src6_tab,
        src6.take(sel),
        d.take(sel),
        dst_tab,
        dst6_tab,
        dst6.take(sel),
        rt.take(sel),
        kind.take(sel),
        value.take(sel),
    )
    return toks, ctx_tokens, mode, kept, k


_REMAP_KEEP4 = np.array([1, 2, 3])  # leading bytes a remapped IPv4 source keeps: its /8, /16 or /24
_REMAP_KEEP6 = np.array([2, 4, 6])  # and an IPv6 one: its /16, /32 or /48


def _remap_sources(tab, tab6, s, ctx, n_contexts: int, share: float, rng: np.random.Generator):
    """In a random `share` of the contexts, every source address becomes a new one (the same throughout the
    context) that keeps a random prefix of the real one (IPv4 /8, /16 or /24; IPv6 /16, /32 or /48) and has
    random bytes after it: a probe the model has never seen, in a known network, as held-out probes are.
    Its RTTs can then only come from what the prefix says and from the context, which is what teaches the
    model to read its context. Returns the source table with the new addresses appended, and the new `s`."""
    hit = nonzero((rng.random(n_contexts) < share).take(ctx))
    if not len(hit):
        return tab, tab6, s
    uniq, inv = np.unique(ctx.take(hit) * len(tab) + s.take(hit), return_inverse=True)
    old = uniq % len(tab)
    v6 = tab6.take(old)
    keep = np.where(v6, rng.choice(_REMAP_KEEP6, len(uniq)), rng.choice(_REMAP_KEEP4, len(uniq)))
    width = np.where(v6, 16, 4)
    cols = np.arange(16)
    fresh = (cols >= keep[:, None]) & (cols < width[:, None])
    new = np.where(fresh, rng.integers(0, 256, (len(uniq), 16), dtype=np.uint8), tab.take(old, axis=0))
    s = s.copy()
    s[hit] = len(tab) + inv.reshape(-1)
    return np.concatenate([tab, new]), np.concatenate([tab6, v6]), s


def _windows_multi(rows, time, rs, ns, crow, target, rng):
    """[a, b) per context in the concatenation: a log-uniform time window of its row (whole if small)."""
    kk = len(target)
    n_c, s_c = ns.take(crow), rs.take(crow)
    a, b = s_c.copy(), s_c + n_c
    big = target < n_c
    if not big.any():
        return a, b
    first = time.take(rs)
    span_r = (time.take(rs + ns - 1) - first).astype(np.float64)
    span = span_r.take(crow)
    r = rng.random((2, kk))
    sel = nonzero(big & (span > 0))
    if len(sel):
        sp, tg, cr = span.take(sel), target.take(sel), crow.take(sel)
        lo = np.log(sp * tg / n_c.take(sel))
        w = np.exp(lo + r[0].take(sel) * (np.log(sp) - lo))
        t0 = r[1].take(sel) * (sp - w)
        # Window [first + ceil(t0), first + ceil(t0 + w)) searched in its row's own (sorted) times.
        q = np.ceil(np.stack([t0, t0 + w])).astype(np.int64) + first.take(cr)
        ab = np.empty_like(q)
        bounds = np.searchsorted(cr, np.arange(len(rows) + 1)).tolist()  # sel is grouped by row
        for row, (i, j) in enumerate(itertools.pairwise(bounds)):
            if i < j:
                ab[:, i:j] = rows[row].time.searchsorted(q[:, i:j])
        ab += rs.take(cr)
        a[sel], b[sel] = ab[0], np.maximum(ab[1], ab[0] + 1)
    # Too sparse a window: widen it around its centre to exactly `target` measurements.
    sparse = big & (b - a < target)
    t, lo_, hi_ = target[sparse], s_c[sparse], s_c[sparse] + n_c[sparse]
    a[sparse] = np.clip((a[sparse] + b[sparse] - t) // 2, lo_, hi_ - t)
    b[sparse] = a[sparse] + t
    return a, b


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

"""Ranking many candidate destinations for one source (SPEC section 7) over a trie of their address bytes.

Per address family the shared prompt (context, `<MeasurementStart>` Src `<DstIPvX>`) runs once into a
batch-1 KV cache. Candidates, sorted by address bytes and taken in chunks, form a trie: the first `depth`
address-byte levels are decoded once per distinct prefix (`Decoder.trie_level`; their keys/values go into a
node store that later rows read by index), `depth` chosen by a cost model so that a level is shared only
where it saves work (random addresses: the first byte; servers in a few hundred /24s: three bytes). Each
candidate then decodes its remaining address bytes, the query's time tokens and `<RttStart>` in one
batched call (`Decoder.leaf`), which reads P(failure) and the RTT high byte and, in the same call, decodes
RTT byte 2 after the high byte whose bucket holds the median (and after the bucket holding the ranking
threshold): the only byte-2 branches a ranking needs. The host then runs the exact bucket search of
`rtt_codes` in float64; a bucket it needs that the device did not expand (a near-tie in float32, a quantile
on a bucket edge) is decoded by an extra call, so results equal `predict` up to float rounding whatever the
trie.

Work per candidate (token evaluations through the whole model, `RankStats`): random IPv4 about 5.2
(0.2 shared first byte, 3 own bytes, `<RttStart>`, byte 2); clustered about 3.5; the unshared path 6.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from pingllm_core.data import tokens as T
from pingllm_core.model.transformer import KVCache
from pingllm_core.query.decode import Runner
from pingllm_core.query.rtt_codes import (
    ALL_RTT_MS,
    BUCKET_HI,
    BUCKET_LO,
    BUCKET_LOWEST,
    CODE_RANK,
    EPS,
    MIN_BRANCH_PROB,
    PLAUSIBLE,
    byte2_probs,
    result_heads,
)

CHUNK = 1024  # candidates per trie (bounds the leaf call: rows x tokens x layers x width)
LEVEL_OVERHEAD = 16  # a shared level's fixed cost (a call, the rows' extra ancestor), in token evaluations


def bucket(n: int, least: int = 8) -> int:
    """Padded size: a power of two, at least `least`, so that jit compiles a handful of shapes."""
    return max(least, 1 << (int(n) - 1).bit_length())


def pad_rows(n: int) -> int:
    """Padded batch size: powers of two up to 256, then multiples of 128 (few compiled shapes, < 1/3 waste)."""
    return bucket(n) if n <= 256 else -(-int(n) // 128) * 128


@dataclasses.dataclass
class RankStats:
    """Work done by one `rank_family` call (for benchmarks and tests)."""

    candidates: int = 0
    token_evals: int = 0  # tokens run through the model for the candidates (real rows, not padding)
    padded_evals: int = 0  # the same with padding rows
    prefix_tokens: int = 0  # shared prompt tokens (run once)
    fallback_rows: int = 0  # byte-2 branches the device missed, decoded by an extra call
    depths: list[int] = dataclasses.field(default_factory=list)  # shared trie levels, per chunk

    def add(self, other: RankStats) -> None:
        """Accumulate another family's or chunk's numbers."""
        for f in ("candidates", "token_evals", "padded_evals", "prefix_tokens", "fallback_rows"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.depths += other.depths


def trie_levels(addr_NxL: np.ndarray) -> list[np.ndarray]:
    """Node id of every row at each depth 1..L (rows sorted by bytes): ids count distinct prefixes."""
    out = []
    diff = np.zeros(len(addr_NxL), bool)
    for j in range(addr_NxL.shape[1]):
        diff[1:] |= addr_NxL[1:, j] != addr_NxL[:-1, j]
        new = diff.copy()
        new[0] = True
        out.append(np.cumsum(new) - 1)
    return out


def segments(sizes: Sequence[int], depth: int) -> list[tuple[int, int]]:
    """The first `depth` levels as runs [j0, j1) without branching (equal node counts): each run is decoded
    in one call, T = j1 - j0 tokens per node (an IPv6 prefix's bytes, a /16 that is alone in its /8)."""
    out: list[tuple[int, int]] = []
    for j in range(depth):
        if out and sizes[j] == sizes[out[-1][0]]:
            out[-1] = (out[-1][0], j + 1)
        else:
            out.append((j, j + 1))
    return out


def plan_depth(sizes: Sequence[int], n: int, tail: int) -> int:
    """How many leading address-byte levels to decode once per distinct prefix: the depth minimising padded
    token evaluations, shared runs (`segments`: each its nodes times its tokens, plus LEVEL_OVERHEAD) plus
    per-candidate tokens (the remaining bytes and `tail` more). The last byte is never shared (its logits
    are needed)."""
    costs = [sum(pad_rows(sizes[j0]) * (j1 - j0) + LEVEL_OVERHEAD for j0, j1 in segments(sizes, d))
             + pad_rows(n) * (len(sizes) - d + tail) for d in range(len(sizes))]  # fmt: skip
    return int(np.argmin(costs))


def _pad(a: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """Pad along `axis` to `size` by repeating the first entry (valid tokens and indices)."""
    extra = size - a.shape[axis]
    if not extra:
        return a
    first = np.take(a, [0], axis=axis)
    return np.concatenate([a, np.repeat(first, extra, axis=axis)], axis=axis)


def _ancestors(levels: list[np.ndarray], n: int) -> np.ndarray:
    """int32[n, A] store indices of each row's ancestors (A may be 0)."""
    return np.stack(levels, 1).astype(np.int32) if levels else np.zeros((n, 0), np.int32)


def summarize(
    p_fail: np.ndarray,
    p1: np.ndarray,
    expand: np.ndarray,
    rows: np.ndarray,
    b1: np.ndarray,
    p2: np.ndarray,
    threshold_ms: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(median ms, P(success and rtt <= threshold) or NaN) per row, vectorised over rows: the same atoms,
    order and sums as `rtt_codes.result_distribution(full=False)` followed by `discrete_quantile`.

    `p1`/`expand`: P(byte 1) and the expanded buckets [B, 256]; (`rows`, `b1`) the expanded pairs in
    np.nonzero order with their P(byte 2) `p2` [P, 256].
    """
    n = len(p1)
    slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # index of each pair among its row's pairs
    m = int(slot.max()) + 1 if len(rows) else 0
    exp_p = np.zeros((n, m, 256))
    exp_p[rows, slot] = p1[rows, b1][:, None] * p2
    exp_code = np.zeros((n, m, 256), np.int64)
    exp_code[rows, slot] = b1[:, None].astype(np.int64) * 256 + np.arange(256)
    # not-expanded buckets enter as one atom at their lowest value
    probs = np.concatenate([np.where(expand, 0.0, p1), exp_p.reshape(n, -1)], 1)
    codes = np.concatenate([np.broadcast_to(np.arange(256) * 256 + BUCKET_LOWEST, (n, 256)),
                            exp_code.reshape(n, -1)], 1)  # fmt: skip
    order = np.argsort(np.where(probs > 0, CODE_RANK[codes], 65536), axis=1, kind="stable")
    probs, codes = np.take_along_axis(probs, order, 1), np.take_along_axis(codes, order, 1)
    probs /= probs.sum(axis=1, keepdims=True)
    last = (probs > 0).sum(axis=1) - 1
    reach = np.cumsum(probs, axis=1) >= 0.5 - EPS
    idx = np.where(reach.any(axis=1), reach.argmax(axis=1), last)
    values = ALL_RTT_MS[codes]
    median = values[np.arange(n), np.minimum(idx, last)]
    if threshold_ms is None:
        return median, np.full(n, np.nan)
    return median, (1 - p_fail) * (probs * (values <= threshold_ms)).sum(axis=1)


def rank_family(
    runner: Runner,
    prefix: KVCache,
    addr_NxL: np.ndarray,
    tail: np.ndarray,
    state: T.GrammarState,
    targets: Sequence[tuple[str, float]],
    progress: Callable[[int], None] | None = None,
    recall_N: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, RankStats]:
    """(p_fail, median ms, P(success and rtt <= threshold)) per candidate, exact around `targets` (the
    median, and at most one ("t", ms) threshold; the last is NaN without one).

    `runner`: the engine's bound decoder; `prefix`: cache of the shared prompt ending with the destination
    marker; `addr_NxL`: the candidates' address bytes, distinct rows; `tail`: the tokens after the address
    (time field, then `<RttStart>`); `state`: grammar state right before the Result field (the same for every
    candidate); `recall_N`: each candidate's pair recall [N, 2] at its `<RttStart>` (`pair_recall.recall_after`;
    None: nothing recalled).
    """
    st = state.copy()
    st.advance(T.RTT_START)
    b1_ok = (st.allowed() & PLAUSIBLE)[T.BYTE0 :]  # the high bytes that get mass (grammar, data range)
    thresholds = [v for kind, v in targets if kind == "t"]
    if len(thresholds) > 1:
        raise ValueError("rank_family takes at most one threshold")
    threshold = thresholds[0] if thresholds else None
    # the device always expands the bucket holding the threshold (the same for every row)
    fixed = np.flatnonzero(b1_ok & (BUCKET_LO <= threshold) & (BUCKET_HI > threshold)) if thresholds else []
    consts = (jnp.asarray(b1_ok), jnp.asarray(np.argsort(BUCKET_LO, kind="stable").astype(np.int32)),
              jnp.asarray(np.asarray(fixed, np.int32)))  # fmt: skip
    order = np.lexsort(addr_NxL.T[::-1])  # rows by address bytes, so that shared prefixes are adjacent
    out = np.zeros((3, len(addr_NxL)))
    stats = RankStats(candidates=len(addr_NxL))
    for c0 in range(0, len(order), CHUNK):
        rows = order[c0 : c0 + CHUNK]
        chunk = Chunk(
            runner, prefix, addr_NxL[rows], tail, consts, stats, None if recall_N is None else recall_N[rows]
        )
        logp_res, logp1 = chunk.run()
        p_fail, p1, need = result_heads(logp_res, logp1, state, False, targets)
        pair_rows, pair_b1 = np.nonzero(need)
        p2 = byte2_probs(chunk.byte2(pair_rows, pair_b1))
        median, p_below = summarize(p_fail, p1, need, pair_rows, pair_b1, p2, threshold)
        out[:, rows] = p_fail, median, p_below
        if progress:
            progress(c0 + len(rows))
    return out[0], out[1], out[2], stats


class Chunk:
    """One trie of at most CHUNK candidates: shared levels, then the leaf call with RTT byte 2 for the
    median's (and threshold's) high byte; `byte2` serves any other (row, high byte) by an extra call."""

    def __init__(self, runner: Runner, prefix: KVCache, addr_NxL, tail, consts, stats: RankStats,
                 recall_N: np.ndarray | None = None):  # fmt: skip
        self.runner, self.prefix, self.consts, self.stats = runner, prefix, consts, stats
        # each row's pair recall at its <RttStart> (None: nothing recalled)
        self.recall = (
            np.zeros((len(addr_NxL), 2), np.int32) if recall_N is None else np.asarray(recall_N, np.int32)
        )
        cfg = runner.cfg
        n = len(addr_NxL)
        node_of = trie_levels(addr_NxL)
        sizes = [int(ids[-1]) + 1 for ids in node_of]
        depth = plan_depth(sizes, n, len(tail))
        stats.depths.append(depth)
        # shared levels: each distinct prefix decoded once, run by run, keys/values into the store at one slot
        # per (node, token); a row's ancestors are the slots of its prefix's tokens
        runs = segments(sizes, depth)
        offsets = np.cumsum([0] + [pad_rows(sizes[j0]) * (j1 - j0) for j0, j1 in runs])
        cap = max(8, 1 << (int(offsets[-1]) - 1).bit_length())
        shape = (cfg.n_layers, cap, cfg.n_heads, cfg.d_head)
        store = (jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))

        def slots(rows: np.ndarray, upto: int) -> list[np.ndarray]:
            """Store slots of the tokens of runs[:upto] on the path of each row."""
            return [offsets[i] + t * pad_rows(sizes[j0]) + node_of[j1 - 1][rows]
                    for i, (j0, j1) in enumerate(runs[:upto]) for t in range(j1 - j0)]  # fmt: skip

        for i, (j0, j1) in enumerate(runs):
            firsts = np.flatnonzero(np.diff(node_of[j0], prepend=-1))  # first row of each node of this run
            anc = _ancestors(slots(firsts, i), len(firsts))
            toks = (T.BYTE0 + addr_NxL[firsts, j0:j1]).astype(np.int32)
            size = pad_rows(len(firsts))
            store = runner.trie_level(prefix, *store, jnp.int32(offsets[i]), jnp.asarray(_pad(anc, size)),
                                      jnp.asarray(_pad(toks, size)))  # fmt: skip
            stats.token_evals += toks.size
            stats.padded_evals += size * (j1 - j0)
        self.store = store
        # leaf rows: the remaining address bytes and the tail
        self.anc = _ancestors(slots(np.arange(n), len(runs)), n)
        self.toks = np.concatenate([T.BYTE0 + addr_NxL[:, depth:].astype(np.int32), np.tile(tail, (n, 1))], 1)

    def _leaf(self, rows_N, toks, n_out: int, expand: bool):
        n, size = len(toks), pad_rows(len(toks))
        recall = np.zeros((*toks.shape, 2), np.int32)
        recall[:, self.toks.shape[1] - 1] = self.recall[rows_N]  # at the <RttStart> that ends the tail
        rows = tuple(jnp.asarray(_pad(a, size)) for a in (self.anc[rows_N], toks, recall))
        res = self.runner.leaf(self.prefix, *self.store, *rows, *self.consts, n_out, expand, MIN_BRANCH_PROB)
        width = toks.shape[1] + (res[1].shape[1] if expand else 0)
        self.stats.token_evals += n * width
        self.stats.padded_evals += size * width
        return [None if r is None else np.asarray(r)[:n] for r in res]

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """Log-probs at the Result position and after `<RttStart>` [B, V], per candidate."""
        logp, self.b1s, self.logp2 = self._leaf(np.arange(len(self.toks)), self.toks, 2, True)
        return logp[:, 0], logp[:, 1]

    def byte2(self, rows: np.ndarray, b1: np.ndarray) -> np.ndarray:
        """Log-probs of RTT byte 2 after (row's `<RttStart>`, high byte `b1`) [P, V]: from the leaf call where
        it expanded that high byte, else by an extra call (rows + `<RttStart>` + the high byte)."""
        hit = self.b1s[rows] == b1[:, None]
        out = self.logp2[rows, hit.argmax(axis=1)]
        miss = np.flatnonzero(~hit.any(axis=1))
        for m in (miss[i : i + CHUNK] for i in range(0, len(miss), CHUNK)):
            toks = np.concatenate([self.toks[rows[m]], T.BYTE0 + b1[m, None].astype(np.int32)], 1)
            out[m] = self._leaf(rows[m], toks, 1, False)[0][:, 0]
        self.stats.fallback_rows += len(miss)
        return out

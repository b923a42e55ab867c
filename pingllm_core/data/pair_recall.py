"""Pair recall: at each `<RttStart>`, the first RTT byte of the last earlier measurement of the same pair.

A model that answers "what RTT between A and B?" with a few measurements in its context should use the ones
of the same pair first. A transformer can learn that by itself (an induction circuit that matches the
query's source and destination, 5 to 17 tokens each, against every earlier measurement's), but the tiny tier
does not within the demo's budget (docs/ABLATIONS.md: it copies a pair repeated alone in a context, not one
of five interleaved pairs). So the model is told: `pair_recall` marks every `<RttStart>` whose measurement
already holds both addresses with what the context last said about that (source, destination) pair, and the
model embeds it (`ModelConfig.pair_recall`) beside the token and its grammar role. Like the roles it is a
causal function of the tokens: the same tokens give the same feature in training, scoring and queries.

Two values per token: the first byte, 0 = nothing (not an `<RttStart>`, an address missing, or no earlier
measurement of the pair in the context), 1 + b for an earlier RTT whose first byte is b, `RECALL_FAILED` for
an earlier `<Failed>`; and the second byte of that RTT, 1 + b (0 = nothing or failed). The model embeds both
at the `<RttStart>` only, and reads the second from there when it predicts the RTT's second byte.

Pairs are compared by two 32-bit hashes (source and destination: family marker and bytes, each byte weighted
by an odd constant of its role), the same in numpy and jax.numpy; a false match needs both to collide.
"""

from __future__ import annotations

import numpy as np

from pingllm_core.data import tokens as T

__all__ = ["N_RECALL", "N_RECALL2", "RECALL_FAILED", "pair_hashes", "pair_recall", "recall_after"]

RECALL_FAILED = 257
N_RECALL = 258  # 0 (nothing), 1 + RTT byte 1 (256 values), failed
N_RECALL2 = 257  # 0 (nothing), 1 + RTT byte 2

_SRC_MARKERS = (T.SRC_IPV4, T.SRC_IPV6)
_DST_MARKERS = (T.DST_IPV4, T.DST_IPV6)
# One odd multiplier per grammar role. Only equality of hashes matters, so any fixed constants do.
_MUL = (np.random.default_rng(20261206).integers(0, 2**31, T.N_ROLES, dtype=np.int64) * 2 + 1).astype(
    np.uint32
)


def _field_weights(roles, markers, xp):
    """Per-token weight of a field's hash (0 outside the field): the role's multiplier where the token's role
    belongs to one of `markers` (the marker itself and its bytes)."""
    marker = roles // T.ROLE_OFFSETS
    inside = (marker == markers[0]) | (marker == markers[1])
    mul = xp.asarray(_MUL)[roles]
    return xp.where(inside, mul, xp.uint32(0)), inside


def pair_hashes(tokens_BxL, roles_BxL, starts_BxL, xp=np):
    """Per token: (source hash, destination hash, both addresses complete) of its measurement so far.

    A measurement begins at `<MeasurementStart>` or a context start (`starts_BxL`). An address is complete
    once all its bytes (4 or 16) have been seen in the measurement."""
    seq = tokens_BxL.shape[-1]
    idx_L = xp.arange(seq)
    begin = (tokens_BxL == T.MEASUREMENT_START) | starts_BxL
    first = T.cummax(xp.where(begin, idx_L, 0), xp)  # the measurement's first token
    # byte + 1 for a byte token, 0 for a marker
    value = xp.where(tokens_BxL >= T.BYTE0, tokens_BxL - T.BYTE0 + 1, 0).astype(xp.uint32)
    out = []
    for markers in (_SRC_MARKERS, _DST_MARKERS):
        w, inside = _field_weights(roles_BxL, markers, xp)
        term = value * w + w  # nonzero for every token of the field: (1 + value) * the role's multiplier
        # Tokens the field holds, counted at its marker (marker and 4 or 16 bytes).
        size = ((tokens_BxL == markers[0]) * 5 + (tokens_BxL == markers[1]) * 17).astype(xp.int32)
        inside = inside.astype(xp.int32)
        # Running sums, minus their value just before the measurement's first token: sums over the measurement.
        h, seen, need = (xp.cumsum(a, axis=-1, dtype=a.dtype) for a in (term, inside, size))
        h, seen, need = (a - xp.take_along_axis(a - d, first, axis=-1)
                         for a, d in ((h, term), (seen, inside), (need, size)))  # fmt: skip
        out.append((h, (need > 0) & (seen == need)))  # uint32 sums wrap mod 2**32, alike in numpy and jax
    (src, src_ok), (dst, dst_ok) = out
    return src, dst, src_ok & dst_ok


def pair_recall(tokens_BxL, roles_BxL, starts_BxL=None, xp=np, last: int | None = None, at=None):
    """The recall (see the module docstring) of every token along the last axis of a 2-D batch, int32[B, L, 2]
    (first byte or failed; second byte), or of `last` tokens only ([B, last, 2], from position `at`, which may
    be traced; None: the last ones): what decoding needs after a cached prefix, without an L x L match.

    `roles_BxL` are `tokens.token_roles` of the same tokens; `starts_BxL` marks where packed contexts begin
    (nothing before a start is recalled across it)."""
    b, seq = tokens_BxL.shape
    idx_L = xp.arange(seq)
    if starts_BxL is None:
        starts_BxL = xp.broadcast_to(idx_L == 0, (b, seq))
    src, dst, ok = pair_hashes(tokens_BxL, roles_BxL, starts_BxL, xp)
    # Each measurement's hashes as it ends (its last token), read at every one of its tokens.
    begin = (tokens_BxL == T.MEASUREMENT_START) | starts_BxL
    nxt = _cummin_reverse(xp.where(begin, idx_L, seq), xp)  # next measurement start at or after a token
    nxt_after = xp.concatenate([nxt[:, 1:], xp.full((b, 1), seq, nxt.dtype)], axis=-1)
    last_tok = nxt_after - 1  # the last token of each token's measurement
    src_end, dst_end, ok_end = (xp.take_along_axis(a, last_tok, axis=-1) for a in (src, dst, ok))
    prev = xp.concatenate([xp.zeros((b, 1), tokens_BxL.dtype), tokens_BxL[:, :-1]], axis=-1)
    byte1 = (prev == T.RTT_START) & (tokens_BxL >= T.BYTE0)
    result = (byte1 | (tokens_BxL == T.FAILED)) & ok_end
    value = xp.where(tokens_BxL == T.FAILED, RECALL_FAILED, tokens_BxL - T.BYTE0 + 1)
    segment = xp.cumsum(starts_BxL.astype(xp.int32), axis=-1)
    if last is None:
        last, at = seq, 0
    elif at is None:
        at = seq - last
    if xp is np:
        window = lambda a: a[..., at : at + last]  # noqa: E731
    else:
        import jax

        window = lambda a: jax.lax.dynamic_slice_in_dim(a, at, last, axis=a.ndim - 1)  # noqa: E731
    query = (window(tokens_BxL) == T.RTT_START) & window(ok)
    match = (
        query[:, :, None]
        & result[:, None, :]
        & (window(src)[:, :, None] == src_end[:, None, :])
        & (window(dst)[:, :, None] == dst_end[:, None, :])
        & (window(segment)[:, :, None] == segment[:, None, :])
        & (idx_L[None, None, :] < window(idx_L)[None, :, None])
    )
    q = xp.max(xp.where(match, idx_L[None, None, :], -1), axis=-1)
    found = xp.take_along_axis(value, xp.maximum(q, 0), axis=-1)
    # the RTT's second byte follows its first (a match on <Failed> has none)
    after = xp.concatenate([tokens_BxL[:, 1:], xp.zeros((b, 1), tokens_BxL.dtype)], axis=-1)
    second = xp.take_along_axis(after, xp.maximum(q, 0), axis=-1) - T.BYTE0 + 1
    hit = q >= 0
    return xp.stack(
        [xp.where(hit, found, 0), xp.where(hit & (found != RECALL_FAILED), second, 0)], axis=-1
    ).astype(xp.int32)


def recall_after(prefix_L: np.ndarray, rows_NxT: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """int32[N, 2]: the recall of the last token of each row of tokens that follows one shared prefix (the
    candidates of a ranking after their common prompt), in chunks of rows."""
    out = np.zeros((len(rows_NxT), 2), np.int32)
    for i in range(0, len(rows_NxT), chunk):
        rows = rows_NxT[i : i + chunk]
        full = np.concatenate([np.broadcast_to(prefix_L, (len(rows), len(prefix_L))), rows], axis=1)
        out[i : i + chunk] = pair_recall(full, T.token_roles(full), None, np, last=1)[:, 0]
    return out


def _cummin_reverse(x, xp):
    if xp is np:
        return np.minimum.accumulate(x[..., ::-1], axis=-1)[..., ::-1]
    import jax

    return jax.lax.cummin(x, axis=x.ndim - 1, reverse=True)

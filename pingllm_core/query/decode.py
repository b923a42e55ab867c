"""Jitted decoding primitives of the query engine: prefill, shared-prefix (cascade) decoding, trie ranking.

Queries run many short continuations of one shared prefix: every row attends to the shared prefix's keys
(one batch-1 cache, read by every row, never copied per row), to ancestors in a node store (trie levels
shared by several rows, read by index) and to its own tokens. `Decoder` holds the jitted functions for one
model structure, `Runner` binds them to one model's weights (what `engine` and `rank` call):

- `prefill`: a whole (padded) prompt into a batch-1 cache, in one call;
- `cascade`: rows continuing the prefix plus their own cached tokens (byte 2 given byte 1 in `predict`);
- `trie_level` / `leaf`: the ranking path (`rank.py`), see there;
- `extend` (`extend_jit`, the model's own `decode` on a gathered cache): the inverse queries' beam search.

One module: the four paths share the cache layout, the split softmax and the block scan.

Why attention and RoPE are written here a second time, beside `model/transformer.py`: the model's
`Block.decode` attends over one per-row cache with a [B, 1, T, S] mask (`jax.nn.dot_product_attention`), so
a shared prefix would be copied into every row's cache (rows x layers x length x width per call) and its
scores computed once per row. Here the prefix's keys stay batch 1 and the scores are split into prefix, node
store and own keys (one softmax in two parts, `_softmax`), in layouts chosen for XLA's CPU matmuls: the same
math in another summation order, so neither path can replace the other without moving results in the last
float bits, and the training forward (packed segments, cuDNN) has no shared prefix to exploit. Scanning the
model's own layers instead would change its parameter tree, and with it every checkpoint. What is shared is
every learned piece: each block is the model's own `Block` (norms, projections, MLP) under `lax.scan` over
its stacked parameters (`split_blocks`: one block compiles instead of n_layers), the embedding is
`Transformer.embed_tokens`, the logits `Transformer.logits`, the rotation is read off the model's `rope`
(`_rope_table`). The two agree by test, in tests/test_query.py: `test_decode_logits_equal_the_model_forward`
(prefill and cascade against `Transformer.__call__`), `test_kv_cache_path_matches_full_forward` (predict)
and the rank tests (trie levels and leaves against one-by-one `predict`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pingllm_core.data import tokens as T
from pingllm_core.data.pair_recall import pair_recall
from pingllm_core.model.transformer import KVCache, rope

_SHORT = 32  # prefix slots, row keys (and half their product with queries) for the [B, T, H, keys] layout


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model shape, shared by every engine
def extend_jit(graphdef, state, cache: KVCache, rows_B, tokens_BxT) -> tuple[jax.Array, KVCache]:
    """Gather cache rows, decode T more tokens; log-probs after the last one and the new cache."""
    model = nnx.merge(graphdef, state)
    role = None if cache.role is None else jnp.take(cache.role, rows_B, axis=0, mode="clip")
    toks = None if cache.tokens is None else jnp.take(cache.tokens, rows_B, axis=0, mode="clip")
    cache = KVCache(jnp.take(cache.k, rows_B, axis=1), jnp.take(cache.v, rows_B, axis=1), cache.length, role,
                    toks)  # fmt: skip
    logits_BxTxV, cache = model.decode(tokens_BxT, cache)
    return jax.nn.log_softmax(logits_BxTxV[:, -1]), cache


class Blocks(NamedTuple):
    """The transformer blocks' parameters stacked along a leading layer axis (a pytree), for `lax.scan`."""

    params: nnx.State  # every nnx.Param of a Block, [N, ...]
    rest: nnx.State  # the rest of block 0's state (dropout RNG; unused at query time)


def split_blocks(model) -> tuple[nnx.GraphDef, Blocks]:
    """Graph of one block and the stacked parameters of all of them (a copy, made once per engine)."""
    graphdef, _, rest = nnx.split(model.blocks[0], nnx.Param, ...)
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b, nnx.Param) for b in model.blocks])
    return graphdef, Blocks(params, rest)


class KV(NamedTuple):
    """Keys or values of every layer for some tokens: layers 0..N-2 stacked (as `lax.scan` emits them) and
    the last layer apart (it is computed outside the scan)."""

    first: jax.Array  # [N-1, B, T, H, K]
    last: jax.Array  # [B, T, H, K]

    def full(self) -> jax.Array:
        """[N, B, T, H, K]."""
        return jnp.concatenate([self.first, self.last[None]], 0)

    @staticmethod
    def of(full_NxBxTxHxK: jax.Array) -> KV:
        return KV(full_NxBxTxHxK[:-1], full_NxBxTxHxK[-1])


def _rope_table(pos_1xT: jax.Array, d_head: int, base: float) -> tuple[jax.Array, jax.Array]:
    """RoPE of T positions shared by every row as multipliers [T, 1, K]: rope(x) = x * c + swap(x) * s with
    swap(x) = (-x2, x1). Read off the model's own `rope` (rotate-half form) applied to (1, .., 1, 0, .., 0),
    and kept out of the big fusions so that sin/cos are evaluated T x K times, not once per row."""
    half = d_head // 2
    e1 = jnp.concatenate([jnp.ones(half, jnp.float32), jnp.zeros(half, jnp.float32)])
    r = rope(jnp.broadcast_to(e1, (1, pos_1xT.shape[1], 1, d_head)), pos_1xT, base)[0]  # [T, 1, K]: cos, sin
    cos, sin = r[..., :half], r[..., half:]
    c, s = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
    return jax.lax.optimization_barrier((c, s))


def _rotate(x_BxTxHxK: jax.Array, table) -> jax.Array:
    """`rope` with a precomputed `_rope_table` (the same float32 arithmetic)."""
    c, s = table
    half = x_BxTxHxK.shape[-1] // 2
    x = x_BxTxHxK.astype(jnp.float32)
    swap = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * c + swap * s).astype(x_BxTxHxK.dtype)


def _attention(block, q_BxTxHxK, prefix, rows, rows_ok_TxR) -> jax.Array:
    """Attention output [B, T, D] of queries over the shared prefix (`prefix`: keys, values [S, H, K] and the
    filled length) and the rows' own keys (`rows`: keys and values [B, R, H, K], visible where
    `rows_ok_TxR`), in one softmax: the model's masked attention.

    Laid out so that XLA's CPU matmuls need no transposes of big arrays: while the shared prefix and the
    per-row keys are both short (ranking, predict), scores are [B, T, H, keys], the projections' own layout:
    the prefix's keys are shared by every row, so its scores are one block-diagonal matmul over heads, and
    each row's keys take one small matmul over all (query, head) x (key, head) pairs, of which the same-head
    ones are kept (H times the useful work, but B batches instead of B x H tiny ones). With a long prefix
    (context) or many own keys (a long prompt), scores are head-major [H, B, T, keys] and matmuls per head.
    """
    b, t, h, k = q_BxTxHxK.shape
    s, r = prefix[0].shape[0], rows[0].shape[1]
    if s <= _SHORT and r <= _SHORT and t * r <= 2 * _SHORT:
        out = _attention_short(q_BxTxHxK, prefix, rows, rows_ok_TxR)
    else:
        out = _attention_heads(q_BxTxHxK, prefix, rows, rows_ok_TxR)
    return block.attn.o(out.reshape(b, t, -1))


def _softmax(sp, sr, length, rows_ok, scale: float, dtype):
    """Softmax over prefix keys (masked past `length`) and row keys (masked by `rows_ok`), last axes, as two
    parts (the same sums as one softmax over their concatenation, without copying the scores)."""
    sp = jnp.where(jnp.arange(sp.shape[-1]) < length, sp * scale, -jnp.inf)
    sr = jnp.where(rows_ok, sr * scale, -jnp.inf)
    m = jnp.maximum(sp.max(-1, keepdims=True), sr.max(-1, keepdims=True))
    ep, er = jnp.exp(sp - m), jnp.exp(sr - m)
    z = ep.sum(-1, keepdims=True) + er.sum(-1, keepdims=True)
    return (ep / z).astype(dtype), (er / z).astype(dtype)


def _attention_short(q_BxTxHxK, prefix, rows, rows_ok_TxR) -> jax.Array:
    """`_attention` for a short prefix and few row keys, in the [B, T, H, keys] layout: [B, T, H, K]."""
    f32 = jnp.float32
    b, t, h, k = q_BxTxHxK.shape
    kp_SxHxK, vp_SxHxK, length = prefix
    s, r = kp_SxHxK.shape[0], rows[0].shape[1]
    eye = jnp.eye(h, dtype=bool)
    kbd = jnp.einsum("shk,hg->hkgs", kp_SxHxK, eye.astype(kp_SxHxK.dtype)).reshape(h * k, h * s)
    sp = jnp.dot(q_BxTxHxK.reshape(b * t, h * k), kbd, preferred_element_type=f32).reshape(b, t, h, s)
    sr = jnp.einsum("bik,bjk->bij", q_BxTxHxK.reshape(b, t * h, k), rows[0].reshape(b, r * h, k),
                    preferred_element_type=f32).reshape(b, t, h, r, h)  # fmt: skip
    sr = jnp.where(eye[:, None, :], sr, 0.0).sum(-1)  # the same-head pairs
    wp, wr = _softmax(sp, sr, length, rows_ok_TxR[:, None, :], k**-0.5, q_BxTxHxK.dtype)
    vbd = jnp.einsum("shk,hg->gshk", vp_SxHxK, eye.astype(vp_SxHxK.dtype)).reshape(h * s, h * k)
    out = jnp.dot(wp.reshape(b * t, h * s), vbd).reshape(b, t, h, k)
    wbd = jnp.where(eye[:, None, :], wr[..., None], 0.0).reshape(b, t * h, r * h)
    return out + jnp.einsum("bij,bjk->bik", wbd, rows[1].reshape(b, r * h, k)).reshape(b, t, h, k)


def _attention_heads(q_BxTxHxK, prefix, rows, rows_ok_TxR) -> jax.Array:
    """`_attention` in the head-major [H, B, T, keys] layout (long prefix or many row keys): [B, T, H, K]."""
    f32 = jnp.float32
    kp_SxHxK, vp_SxHxK, length = prefix
    q = q_BxTxHxK.transpose(2, 0, 1, 3)  # [H, B, T, K]
    kr, vr = rows[0].transpose(2, 0, 1, 3), rows[1].transpose(2, 0, 1, 3)  # [H, B, R, K]
    sp = jnp.einsum("hbtk,shk->hbts", q, kp_SxHxK, preferred_element_type=f32)
    sr = jnp.einsum("hbtk,hbrk->hbtr", q, kr, preferred_element_type=f32)
    wp, wr = _softmax(sp, sr, length, rows_ok_TxR, q.shape[-1] ** -0.5, q.dtype)
    out = jnp.einsum("hbts,shk->hbtk", wp, vp_SxHxK) + jnp.einsum("hbtr,hbrk->hbtk", wr, vr)
    return out.transpose(1, 2, 0, 3)


def _block(block, x_BxTxD, table, prefix, anc, prev, own_ok_TxJ, n_out: int):
    """One block over T new tokens per row: (residual stream of the last n_out positions or None, k, v).

    Row keys: ancestors `anc` ([B, A, H, K] keys and values, all visible), own tokens decoded before
    (`prev`, [B, U, H, K] or None) and these T, with `own_ok_TxJ` over the U + T. Positions not among the
    last n_out need only this block's keys and values (no query, attention output or MLP): the last block
    skips that work for positions whose logits nobody reads."""
    b, t, _ = x_BxTxD.shape
    h = block.attn_norm(x_BxTxD)
    shape = (b, -1, block.attn.cfg.n_heads, block.attn.cfg.d_head)
    k_new = _rotate(block.attn.k(h).reshape(shape), table)
    v_new = block.attn.v(h).reshape(shape)
    if n_out == 0:
        return None, k_new, v_new
    cut = slice(t - n_out, t)
    q = _rotate(block.attn.q(h[:, cut]).reshape(shape), (table[0][cut], table[1][cut]))
    parts = [anc] + ([] if prev is None else [prev]) + [(k_new, v_new)]
    rows = tuple(jnp.concatenate([p[j] for p in parts], 1) for j in (0, 1))
    rows_ok = jnp.concatenate([jnp.ones((n_out, anc[0].shape[1]), bool), own_ok_TxJ[cut]], 1)
    x = x_BxTxD[:, cut] + _attention(block, q, prefix, rows, rows_ok)
    return x + block.mlp(block.mlp_norm(x)), k_new, v_new


def _stack(model, bgraph, blocks: Blocks, tokens_BxT, roles_BxT, pos_1xT, prefix: KVCache, store, anc_BxA,
           prev, own_ok_TxJ, n_out: int, recall_BxTx2=None):  # fmt: skip
    """All blocks over T new tokens per row (grammar roles `roles_BxT`, positions `pos_1xT`, the same for every
    row).

    Row keys: the shared `prefix` cache (batch 1), ancestors in `store` (keys, values [N, C, H, K]) at store
    indices `anc_BxA`, own tokens decoded before (`prev`: KV pair or None) and these T (mask `own_ok_TxJ`
    over prev + T). `recall_BxTx2`: the tokens' pair recall (None: nothing recalled, right for tokens with no
    `<RttStart>`). Returns (residual stream of the last n_out positions after the last block or None,
    keys KV, values KV) of the T tokens.
    """
    cfg = model.cfg
    table = _rope_table(pos_1xT, cfg.d_head, cfg.rope_base)
    t = tokens_BxT.shape[1]

    def layer(i, x, own, n):
        block = nnx.merge(bgraph, jax.tree.map(lambda a: a[i], blocks.params), blocks.rest)
        pre = (prefix.k[i, 0], prefix.v[i, 0], prefix.length)
        anc = (store[0][i][anc_BxA], store[1][i][anc_BxA])
        return _block(block, x, table, pre, anc, own, own_ok_TxJ, n)

    def body(x, i):
        x, k, v = layer(i, x, None if prev is None else (prev[0].first[i], prev[1].first[i]), t)
        return x, (k, v)

    x = model.embed_tokens(tokens_BxT, roles_BxT, recall_BxTx2)
    if cfg.n_layers > 1:
        x, (ks, vs) = jax.lax.scan(body, x, jnp.arange(cfg.n_layers - 1))
    else:  # a one-block model: nothing to scan
        b = tokens_BxT.shape[0]
        ks = vs = jnp.zeros((0, b, t, cfg.n_heads, cfg.d_head), cfg.compute_dtype)
    x, k, v = layer(cfg.n_layers - 1, x, None if prev is None else (prev[0].last, prev[1].last), n_out)
    return x, KV(ks, k), KV(vs, v)


def _empty_store(model, b: int):
    """A one-slot store and no ancestors (A = 0)."""
    cfg = model.cfg
    zeros = jnp.zeros((cfg.n_layers, 1, cfg.n_heads, cfg.d_head), cfg.compute_dtype)
    return (zeros, zeros), jnp.zeros((b, 0), jnp.int32)


def _prefill(graphdef, bgraph, state, blocks, tokens_1xL, n, capacity: int) -> tuple[jax.Array, KVCache]:
    """A prompt padded to L tokens (the first `n` real) into a fresh batch-1 cache of `capacity` >= L slots;
    log-probs after every token [L, V] and the cache with length n (the padding's keys sit past the end,
    where every later query masks them out until they are overwritten)."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    size = tokens_1xL.shape[1]
    empty = model.init_cache(1, 1)  # no shared prefix: length 0, every key masked
    store, anc = _empty_store(model, 1)
    causal = jnp.tril(jnp.ones((size, size), bool))
    pos = jnp.arange(size)[None]
    roles = T.token_roles(tokens_1xL, jnp)
    recall = pair_recall(tokens_1xL, roles, None, jnp) if cfg.pair_recall else None
    x, k, v = _stack(
        model, bgraph, blocks, tokens_1xL, roles, pos, empty, store, anc, None, causal, size, recall
    )
    logp_LxV = jax.nn.log_softmax(model.logits(x[0]))
    pad = ((0, 0), (0, 0), (0, capacity - size), (0, 0), (0, 0))
    k, v = (jnp.pad(kv.full(), pad).astype(cfg.compute_dtype) for kv in (k, v))
    toks = jnp.pad(tokens_1xL, ((0, 0), (0, capacity - size))) if cfg.pair_recall else None
    role = jax.lax.dynamic_slice(roles[0], (n - 1,), (1,))
    return logp_LxV, KVCache(k, v, jnp.asarray(n, jnp.int32), role, toks)


def _cascade(graphdef, bgraph, state, blocks, prefix: KVCache, own_k, own_v, rows_B, tokens_BxT):
    """T tokens after (shared prefix, the row's own U cached tokens `own_k/v` [N, B0, U, H, K] at `rows_B`, bytes
    of the prefix's last field); log-probs at every new position [B, T, V] and the rows' own keys/values
    extended to U + T."""
    model = nnx.merge(graphdef, state)
    b, t = tokens_BxT.shape
    own_k, own_v = jnp.take(own_k, rows_B, axis=1), jnp.take(own_v, rows_B, axis=1)
    u = own_k.shape[2]
    after_own = T.role_after_bytes(prefix.role, u, jnp)  # own tokens: bytes of the prefix's last field
    roles = T.continue_roles(jnp.broadcast_to(after_own, (b,)), tokens_BxT, jnp)
    pos_1xT = (prefix.length + u + jnp.arange(t, dtype=jnp.int32))[None]
    own_ok = jnp.arange(u + t)[None, :] <= (u + jnp.arange(t))[:, None]  # causal over own tokens
    store, anc = _empty_store(model, b)
    prev = (KV.of(own_k), KV.of(own_v))
    x, k, v = _stack(model, bgraph, blocks, tokens_BxT, roles, pos_1xT, prefix, store, anc, prev, own_ok, t)
    logp = jax.nn.log_softmax(model.logits(x))  # the model's own final norm and (tied) unembedding
    return logp, jnp.concatenate([own_k, k.full()], 2), jnp.concatenate([own_v, v.full()], 2)


def _trie_level(
    graphdef, bgraph, state, blocks, prefix: KVCache, store_k, store_v, offset, anc_BxA, tokens_BxT
):
    """A run of shared trie levels without branching: B nodes of T tokens each after the shared prefix and
    their A ancestor tokens (store slots `anc_BxA`), at positions prefix length + A + 0..T-1. Token t of node
    b goes into store slot offset + t * B + b ([N, C, H, K], donated); no logits. Returns (store_k, store_v).
    """
    model = nnx.merge(graphdef, state)
    b, t = tokens_BxT.shape
    pos_1xT = (prefix.length + anc_BxA.shape[1] + jnp.arange(t, dtype=jnp.int32))[None]
    causal = jnp.tril(jnp.ones((t, t), bool))
    store = (store_k, store_v)
    # The nodes' tokens are address bytes after the prefix's destination marker and their ancestors' bytes.
    roles = T.continue_roles(
        jnp.broadcast_to(T.role_after_bytes(prefix.role, anc_BxA.shape[1], jnp), (b,)), tokens_BxT, jnp
    )
    _, k, v = _stack(
        model, bgraph, blocks, tokens_BxT, roles, pos_1xT, prefix, store, anc_BxA, None, causal, 0
    )
    n = model.cfg.n_layers
    out = []
    for st, kv in zip(store, (k, v), strict=True):
        st = jax.lax.dynamic_update_slice(st, _slots(kv.first).astype(st.dtype), (0, offset, 0, 0))
        out.append(
            jax.lax.dynamic_update_slice(st, _slots(kv.last)[None].astype(st.dtype), (n - 1, offset, 0, 0))
        )
    return tuple(out)


def _slots(a_BxTxHxK: jax.Array) -> jax.Array:
    """[..., B, T, H, K] -> [..., T * B, H, K], token-major (store slot t * B + b)."""
    a = jnp.swapaxes(a_BxTxHxK, -4, -3)
    return a.reshape(a.shape[:-4] + (a.shape[-4] * a.shape[-3],) + a.shape[-2:])


def median_bucket(logp1_Bx256, b1_ok_256, b1_by_lo_256, min_prob: float, eps: float) -> jax.Array:
    """The RTT high byte whose bucket holds the median (buckets in value order): the host's float64 bucket
    search done in float32 (the host checks it and decodes any bucket it misses itself)."""
    p = jax.nn.softmax(jnp.where(b1_ok_256, logp1_Bx256, -jnp.inf), axis=-1)
    p = jnp.where(p >= min_prob, p, 0.0)
    p = p / p.sum(axis=-1, keepdims=True)
    cdf = jnp.cumsum(p[:, b1_by_lo_256], axis=-1)
    return b1_by_lo_256[jnp.argmax(cdf >= 0.5 - eps, axis=-1)]


def _leaf(graphdef, bgraph, state, blocks, prefix: KVCache, store_k, store_v, anc_BxA, tokens_BxT, recall_BxTx2,
          b1_ok_256, b1_by_lo_256, fixed_b1_E, n_out: int, expand: bool, min_prob: float):  # fmt: skip
    """Rows of T own tokens after the shared prefix and their A ancestors (store indices `anc_BxA`, at
    positions prefix length + 0..A-1; `recall_BxTx2` their pair recall [B, T, 2], computed by the host, which
    knows each row's whole measurement): log-probs at the last `n_out` positions [B, n_out, V].

    With `expand`, a second pass decodes RTT byte 2 right after (last token = `<RttStart>`): one row token
    per RTT high byte, the median bucket of the row's byte-1 distribution (`median_bucket`) and then the
    `fixed_b1_E` (e.g. the bucket holding a threshold). Each sees the prefix, ancestors and T own tokens but
    not the other expansions. Returns (logp [B, n_out, V], high bytes [B, 1 + E], logp2 [B, 1 + E, V]).
    """
    model = nnx.merge(graphdef, state)
    b, t = tokens_BxT.shape
    start = prefix.length + anc_BxA.shape[1]
    pos_1xT = (start + jnp.arange(t, dtype=jnp.int32))[None]
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    store = (store_k, store_v)
    roles = T.continue_roles(
        jnp.broadcast_to(T.role_after_bytes(prefix.role, anc_BxA.shape[1], jnp), (b,)), tokens_BxT, jnp
    )
    x, k, v = _stack(
        model,
        bgraph,
        blocks,
        tokens_BxT,
        roles,
        pos_1xT,
        prefix,
        store,
        anc_BxA,
        None,
        causal_TxT,
        n_out,
        recall_BxTx2 if model.cfg.pair_recall else None,
    )
    logp = jax.nn.log_softmax(model.logits(x))  # the model's own final norm and (tied) unembedding
    if not expand:
        return logp, None, None
    b1_B = median_bucket(logp[:, -1, T.BYTE0 :], b1_ok_256, b1_by_lo_256, min_prob, 1e-9)
    b1_BxE = jnp.concatenate([b1_B[:, None], jnp.broadcast_to(fixed_b1_E, (b, fixed_b1_E.shape[0]))], 1)
    e = b1_BxE.shape[1]
    pos_1xE = jnp.full((1, e), start + t, jnp.int32)
    own_ok_ExJ = jnp.concatenate(
        [jnp.ones((e, t), bool), jnp.eye(e, dtype=bool)], 1
    )  # own tokens, then itself
    roles2 = jnp.broadcast_to(T.continue_roles(roles[:, -1], b1_BxE[:, :1] + T.BYTE0, jnp), (b, e))
    x2, _, _ = _stack(model, bgraph, blocks, T.BYTE0 + b1_BxE, roles2, pos_1xE, prefix, store, anc_BxA, (k, v),
                      own_ok_ExJ, e)  # fmt: skip
    return logp, b1_BxE, jax.nn.log_softmax(model.logits(x2))


class Decoder:
    """The jitted functions for one model structure (graph definitions bound, so calls hash no graphs).

    Each takes (model state, stacked `Blocks`, ...) after the bound graphs; see the module functions.
    """

    def __init__(self, graphdef: nnx.GraphDef, bgraph: nnx.GraphDef):
        bind = functools.partial
        self.prefill = jax.jit(bind(_prefill, graphdef, bgraph), static_argnums=4)
        self.cascade = jax.jit(bind(_cascade, graphdef, bgraph))
        self.trie_level = jax.jit(bind(_trie_level, graphdef, bgraph), donate_argnums=(3, 4))
        self.leaf = jax.jit(bind(_leaf, graphdef, bgraph), static_argnums=(11, 12, 13))


@functools.cache
def decoder(graphdef: nnx.GraphDef, bgraph: nnx.GraphDef) -> Decoder:
    """The `Decoder` of a model structure: compiled once per shape, shared by every engine of that model."""
    return Decoder(graphdef, bgraph)


class Runner:
    """The `Decoder` of a model and `extend_jit` bound to its weights, one per engine: `graphdef`/`state` are
    the model split at query-time numerics, `model` the merged module (its blocks' parameters are stacked
    here once). Each method is the module function of the same name."""

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State, model):
        self.cfg = model.cfg
        self.graphdef, self.state = graphdef, state
        bgraph, self.blocks = split_blocks(model)  # block weights stacked once, for lax.scan
        self.dec = decoder(graphdef, bgraph)  # jitted functions, shared by same-shape engines

    def prefill(self, tokens_1xL, n, capacity: int) -> tuple[jax.Array, KVCache]:
        return self.dec.prefill(self.state, self.blocks, tokens_1xL, n, capacity)

    def cascade(self, prefix: KVCache, own_k, own_v, rows_B, tokens_BxT):
        return self.dec.cascade(self.state, self.blocks, prefix, own_k, own_v, rows_B, tokens_BxT)

    def trie_level(self, prefix: KVCache, store_k, store_v, offset, anc_BxA, tokens_BxT):
        return self.dec.trie_level(
            self.state, self.blocks, prefix, store_k, store_v, offset, anc_BxA, tokens_BxT
        )

    def leaf(self, prefix: KVCache, store_k, store_v, anc_BxA, tokens_BxT, recall_BxTx2, b1_ok_256, b1_by_lo_256,
             fixed_b1_E, n_out: int, expand: bool, min_prob: float):  # fmt: skip
        return self.dec.leaf(self.state, self.blocks, prefix, store_k, store_v, anc_BxA, tokens_BxT, recall_BxTx2,
                             b1_ok_256, b1_by_lo_256, fixed_b1_E, n_out, expand, min_prob)  # fmt: skip

    def extend(self, cache: KVCache, rows_B, tokens_BxT) -> tuple[jax.Array, KVCache]:
        return extend_jit(self.graphdef, self.state, cache, rows_B, tokens_BxT)

"""Jitted decoding primitives of the query engine: KV-cache extension and shared-prefix (cascade) decoding.

`extend_jit` uses the model's public `decode` on a gathered cache. `cascade_jit` serves many short
continuations of one shared prefix without copying the prefix cache per row: attention is split into the
shared prefix keys (one batch-1 cache, read by every row) and each row's own few keys. It reuses the
model's layers (embed, blocks' norms/projections/MLP, final logits) and must match `Transformer.decode`;
the tests check it against `predict`, which goes through `decode`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pingllm_core.model import KVCache


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model shape, shared by every engine
def extend_jit(graphdef, state, cache: KVCache, rows_B, tokens_BxT) -> tuple[jax.Array, KVCache]:
    """Gather cache rows, decode T more tokens; log-probs after the last one and the new cache."""
    model = nnx.merge(graphdef, state)
    cache = KVCache(jnp.take(cache.k, rows_B, axis=1), jnp.take(cache.v, rows_B, axis=1), cache.length)
    logits_BxTxV, cache = model.decode(tokens_BxT, cache)
    return jax.nn.log_softmax(logits_BxTxV[:, -1]), cache


@functools.partial(jax.jit, static_argnums=0)
def cascade_jit(graphdef, state, prefix: KVCache, own_k_NxBxUxHxK, own_v_NxBxUxHxK, rows_B, tokens_BxT):
    """T tokens after (shared prefix, the row's own U cached tokens); log-probs at every new position
    [B, T, V] and the rows' own keys/values extended to U + T."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    own_k = jnp.take(own_k_NxBxUxHxK, rows_B, axis=1)
    own_v = jnp.take(own_v_NxBxUxHxK, rows_B, axis=1)
    b, t = tokens_BxT.shape
    u, s = own_k.shape[2], prefix.k.shape[2]
    positions_BxT = jnp.broadcast_to(prefix.length + u + jnp.arange(t, dtype=jnp.int32), (b, t))
    prefix_ok_S = jnp.arange(s) < prefix.length
    own_ok_TxJ = jnp.arange(u + t)[None, :] <= (u + jnp.arange(t))[:, None]  # causal over own tokens
    scale = cfg.d_head**-0.5  # as jax.nn.dot_product_attention
    x_BxTxD = model.embed(tokens_BxT)
    ks, vs = [], []
    for i, block in enumerate(model.blocks):
        q, k_new, v_new = block.attn.qkv(block.attn_norm(x_BxTxD), positions_BxT)
        k_BxJxHxK = jnp.concatenate([own_k[i], k_new.astype(own_k.dtype)], axis=1)
        v_BxJxHxK = jnp.concatenate([own_v[i], v_new.astype(own_v.dtype)], axis=1)
        kp_SxHxK, vp_SxHxK = prefix.k[i, 0], prefix.v[i, 0]
        sp = jnp.einsum("bthk,shk->bhts", q, kp_SxHxK, preferred_element_type=jnp.float32) * scale
        so = jnp.einsum("bthk,bjhk->bhtj", q, k_BxJxHxK, preferred_element_type=jnp.float32) * scale
        sp = jnp.where(prefix_ok_S, sp, -jnp.inf)
        so = jnp.where(own_ok_TxJ, so, -jnp.inf)
        w = jax.nn.softmax(jnp.concatenate([sp, so], axis=-1), axis=-1).astype(q.dtype)
        out_BxTxHxK = jnp.einsum("bhts,shk->bthk", w[..., :s], vp_SxHxK) + jnp.einsum(
            "bhtj,bjhk->bthk", w[..., s:], v_BxJxHxK
        )
        x_BxTxD = x_BxTxD + block.attn.o(out_BxTxHxK.reshape(b, t, -1))
        x_BxTxD = x_BxTxD + block.mlp(block.mlp_norm(x_BxTxD))
        ks.append(k_BxJxHxK)
        vs.append(v_BxJxHxK)
    logits_BxTxV = model._logits(x_BxTxD)  # the model's own final norm and (tied) unembedding
    return jax.nn.log_softmax(logits_BxTxV), jnp.stack(ks), jnp.stack(vs)

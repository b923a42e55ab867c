"""Decoder-only transformer (Flax NNX): pre-norm RMSNorm, RoPE, tied embeddings, packed segments, KV cache.

One module: the config, the attention paths (XLA, cuDNN packed segments) and the modules that choose between
them define one architecture, which query/decode.py mirrors from the weights.

Shape suffixes: B batch, L sequence, T new tokens, S cached keys, D d_model, H heads, K d_head, F d_mlp,
V vocab, N layers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pingllm_core.data import tokens as T
from pingllm_core.data.pair_recall import N_RECALL, N_RECALL2, pair_recall

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
ATTENTION_IMPLS = (None, "xla", "cudnn", "cudnn_packed")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the transformer; the defaults are the `base` tier (SPEC section 6)."""

    vocab_size: int = 267  # the fixed token language of SPEC section 4
    d_model: int = 640  # residual stream width
    n_layers: int = 20  # transformer blocks
    n_heads: int = 10  # attention heads
    d_head: int = 64  # width of one head (n_heads * d_head need not equal d_model)
    d_mlp: int = 2048  # hidden width of the GELU MLP
    max_len: int = 1024  # longest context the model is trained and queried on (tokens)
    dropout: float = 0.1  # dropout rate on attention and MLP outputs, training only
    dtype: str = "bfloat16"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters (optimizer works on these)
    rope_base: float = 10_000.0  # RoPE wavelength base
    tie_embeddings: bool = True  # output logits reuse the input embedding matrix
    scan_layers: bool = False  # reserved: layers are always unrolled in this version
    # Training attention: None = pick for the backend (see `resolve_attention`), "xla", "cudnn" (boolean
    # mask, full L x L), or "cudnn_packed" (cuDNN's packed layout: causal per segment, no mask tensor).
    attention_impl: str | None = None
    max_segments: int = 64  # segments per row the packed layout holds; rows with more take the mask path
    # Add a learned embedding of each token's grammar role (`tokens.token_roles`: which field, which byte of
    # it) to the token embedding, so that no layer has to work out that a <Byte70> is an RTT's first byte.
    role_embedding: bool = True
    # Add learned embeddings of `pair_recall.pair_recall` (at each <RttStart>: the two RTT bytes of the last
    # earlier measurement of the same pair in the context), so the model need not learn to match two
    # addresses against every earlier measurement to use a pair's own history. False in older checkpoints.
    pair_recall: bool = False
    # Share of training <RttStart>s whose pair recall is hidden (set to nothing), so that the model keeps
    # learning cold answers from the addresses alone: with the recall, most training RTTs are easy copies.
    recall_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_head % 2:
            raise ValueError(f"ModelConfig.d_head must be even for RoPE, got {self.d_head}")
        if not 0.0 <= self.recall_dropout < 1.0:
            raise ValueError(f"ModelConfig.recall_dropout must be in [0, 1), got {self.recall_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(
                    f"ModelConfig.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)}"
                )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"ModelConfig.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.max_segments < 2:
            raise ValueError(f"ModelConfig.max_segments must be >= 2, got {self.max_segments}")
        if self.scan_layers:
            raise ValueError("ModelConfig.scan_layers=True is not implemented; layers are unrolled")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations."""
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> jnp.dtype:
        """The jnp dtype of parameters."""
        return _DTYPES[self.param_dtype]

    def to_dict(self) -> dict:
        """Plain dict for JSON and tracking."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of `to_dict`, ignoring unknown keys from newer versions."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


TIERS: dict[str, ModelConfig] = {
    # Trains on a laptop CPU in minutes; used by tests and the embedded demo. No dropout: at this size and
    # step budget the model underfits (ablation: held-out RTT loss 4.00 without dropout, 4.06 with 0.1).
    # Every tier embeds the pair recall, hidden at 30% of training RTTs (docs/ABLATIONS.md, "Pair recall").
    "tiny": ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_head=16,
        d_mlp=256,
        dropout=0.0,
        pair_recall=True,
        recall_dropout=0.3,
    ),
    # About 10M parameters: a useful model on CPU in hours.
    "small": ModelConfig(
        d_model=320, n_layers=10, n_heads=5, d_head=64, d_mlp=1024, pair_recall=True, recall_dropout=0.3
    ),
    # The study's shape, about 85M parameters.
    "base": ModelConfig(pair_recall=True, recall_dropout=0.3),
}


def model_config(tier: str, **overrides) -> ModelConfig:
    """The config of a named tier, with optional field overrides."""
    if tier not in TIERS:
        raise ValueError(f"unknown model tier {tier!r}; choose one of {sorted(TIERS)}")
    return dataclasses.replace(TIERS[tier], **overrides)


class KVCache(NamedTuple):
    """Keys and values of every layer for the tokens decoded so far (a pytree of arrays)."""

    k: jax.Array  # [N, B, S, H, K] compute dtype
    v: jax.Array  # [N, B, S, H, K] compute dtype
    length: jax.Array  # int32 scalar: number of filled positions
    role: jax.Array | None = None  # int32[B]: grammar role of each row's last token (-1: none yet)
    tokens: jax.Array | None = None  # int32[B, S]: the cached tokens (the pair recall of new ones reads them)


class PackedSegments(NamedTuple):
    """A batch's segments as cuDNN's packed layout wants them: every maximal run of one segment id
    (padding included) is a sequence of its own, so causal-within-run is exactly the model's mask."""

    seqlen_BxM: jax.Array  # int32: tokens in run m of row b; -1 past the row's last run
    offsets_BxM1: jax.Array  # int32: first token of run m; -1 past the last run (M + 1 columns)
    fits: jax.Array | None  # bool scalar: no row has more than M runs (else the mask path runs); None: the
    # caller vouches that all rows fit, and no fallback is compiled


def packed_segments(segment_ids_BxL: jax.Array, max_segments: int) -> PackedSegments:
    """Run lengths and offsets of each row's segment-id runs, M = `max_segments` slots per row."""
    b, seq = segment_ids_BxL.shape
    first_BxL = jnp.concatenate(
        [jnp.ones((b, 1), bool), segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]], axis=1
    )
    run_BxL = jnp.cumsum(first_BxL, axis=1, dtype=jnp.int32) - 1  # run index of each token
    n_runs_B = run_BxL[:, -1] + 1
    rows_Bx1 = jnp.arange(b, dtype=jnp.int32)[:, None]
    counts_BxM = jnp.zeros((b, max_segments), jnp.int32).at[rows_Bx1, run_BxL].add(1, mode="drop")
    live_BxM = jnp.arange(max_segments, dtype=jnp.int32)[None, :] < n_runs_B[:, None]
    starts_BxM = jnp.cumsum(counts_BxM, axis=1, dtype=jnp.int32) - counts_BxM
    return PackedSegments(
        seqlen_BxM=jnp.where(live_BxM, counts_BxM, -1),
        offsets_BxM1=jnp.pad(jnp.where(live_BxM, starts_BxM, -1), ((0, 0), (0, 1)), constant_values=-1),
        fits=jnp.all(n_runs_B <= max_segments),
    )


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def resolve_attention(cfg: ModelConfig) -> str:
    """The training attention path. Off a GPU always "xla" (cuDNN needs one, and a config written on a GPU
    host must still load here). On a GPU the config's choice, else the packed cuDNN kernel on Hopper or
    later with 16-bit compute, the masked cuDNN kernel on an older GPU, and XLA for float32."""
    if not _on_gpu():
        return "xla"
    if cfg.attention_impl is not None:
        return cfg.attention_impl
    if cfg.dtype == "float32" or cfg.d_head % 8:
        return "xla"
    major = int(str(getattr(jax.devices()[0], "compute_capability", "0")).split(".")[0])
    return "cudnn_packed" if major >= 9 else "cudnn"


def _cudnn_packed_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, packed: PackedSegments) -> jax.Array:
    """cuDNN flash attention over packed segments: causal within each run, no mask tensor, and the
    blocks above the diagonal are skipped."""
    # jax.nn.dot_product_attention does not take segment offsets; the cuDNN module it calls does.
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_attention

    return cudnn_attention(
        q_BxLxHxK,
        k_BxLxHxK,
        v_BxLxHxK,
        None,
        None,
        packed.seqlen_BxM,
        packed.seqlen_BxM,
        packed.offsets_BxM1,
        packed.offsets_BxM1,
        scale=float(q_BxLxHxK.shape[-1]) ** -0.5,
        mask_type=MaskType.PADDING_CAUSAL,
    )


def rope(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (rotate-half form), computed in float32."""
    half = x_BxLxHxK.shape[-1] // 2
    inv_freq_K2 = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    angle_BxLxK2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_K2
    sin, cos = jnp.sin(angle_BxLxK2)[:, :, None, :], jnp.cos(angle_BxLxK2)[:, :, None, :]
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


def _linear(d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs, scale: float = 1.0) -> nnx.Linear:
    init = nnx.initializers.normal(stddev=scale * d_in**-0.5)  # keeps activations O(1) at init
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        kernel_init=init,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        rngs=rngs,
    )


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with RoPE; mask given by the caller."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        hk = cfg.n_heads * cfg.d_head
        self.q = _linear(cfg.d_model, hk, cfg, rngs)
        self.k = _linear(cfg.d_model, hk, cfg, rngs)
        self.v = _linear(cfg.d_model, hk, cfg, rngs)
        # Residual-branch outputs start small (GPT-2) so the stream's scale does not grow with depth.
        self.o = _linear(hk, cfg.d_model, cfg, rngs, scale=(2 * cfg.n_layers) ** -0.5)

    def qkv(self, x_BxLxD: jax.Array, positions_BxL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected, rotated queries and keys and projected values, [B, L, H, K] each."""
        b, seq, _ = x_BxLxD.shape
        shape = (b, seq, self.cfg.n_heads, self.cfg.d_head)
        q_BxLxHxK = rope(self.q(x_BxLxD).reshape(shape), positions_BxL, self.cfg.rope_base)
        k_BxLxHxK = rope(self.k(x_BxLxD).reshape(shape), positions_BxL, self.cfg.rope_base)
        return q_BxLxHxK, k_BxLxHxK, self.v(x_BxLxD).reshape(shape)

    def attend(
        self,
        q_BxTxHxK: jax.Array,
        k_BxSxHxK: jax.Array,
        v_BxSxHxK: jax.Array,
        mask_Bx1xTxS: jax.Array,
        impl: str = "xla",
        packed: PackedSegments | None = None,
    ) -> jax.Array:
        """Masked attention of T queries over S keys (`impl` "xla" or "cudnn"), projected back to [B, T, D].

        With `packed` (square self-attention only) the packed cuDNN kernel runs when every row fits its
        M run slots, and the masked kernel otherwise: the same function either way.
        """

        def masked(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xTxS, implementation=impl)

        if packed is None:
            out_BxTxHxK = masked(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
        elif packed.fits is None:
            out_BxTxHxK = _cudnn_packed_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, packed)
        else:
            out_BxTxHxK = jax.lax.cond(
                packed.fits,
                lambda q, k, v: _cudnn_packed_attention(q, k, v, packed),
                masked,
                q_BxTxHxK,
                k_BxSxHxK,
                v_BxSxHxK,
            )
        b, t = out_BxTxHxK.shape[:2]
        return self.o(out_BxTxHxK.reshape(b, t, -1))


class Mlp(nnx.Module):
    """Two-matrix GELU MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.up = _linear(cfg.d_model, cfg.d_mlp, cfg, rngs)
        self.down = _linear(cfg.d_mlp, cfg.d_model, cfg, rngs, scale=(2 * cfg.n_layers) ** -0.5)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        """Apply the MLP."""
        return self.down(jax.nn.gelu(self.up(x_BxLxD)))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = Mlp(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(
        self,
        x_BxLxD,
        positions_BxL,
        mask_Bx1xLxL,
        *,
        deterministic: bool,
        impl: str = "xla",
        packed: PackedSegments | None = None,
    ) -> jax.Array:
        """Full-sequence block (training and scoring)."""
        q, k, v = self.attn.qkv(self.attn_norm(x_BxLxD), positions_BxL)
        attn_BxLxD = self.attn.attend(q, k, v, mask_Bx1xLxL, impl, packed)
        x_BxLxD = x_BxLxD + self.dropout(attn_BxLxD, deterministic=deterministic)
        return x_BxLxD + self.dropout(self.mlp(self.mlp_norm(x_BxLxD)), deterministic=deterministic)

    def decode(self, x_BxTxD, positions_BxT, k_BxSxHxK, v_BxSxHxK, start, mask_Bx1xTxS):
        """Block over T new tokens written into the layer cache at `start`; returns (x, k, v)."""
        q, k_new, v_new = self.attn.qkv(self.attn_norm(x_BxTxD), positions_BxT)
        k_BxSxHxK = jax.lax.dynamic_update_slice(k_BxSxHxK, k_new.astype(k_BxSxHxK.dtype), (0, start, 0, 0))
        v_BxSxHxK = jax.lax.dynamic_update_slice(v_BxSxHxK, v_new.astype(v_BxSxHxK.dtype), (0, start, 0, 0))
        # Decode (T new tokens over S cached keys) uses cuDNN only when the config asks for it.
        impl = "cudnn" if self.attn.cfg.attention_impl == "cudnn" and _on_gpu() else "xla"
        x_BxTxD = x_BxTxD + self.attn.attend(q, k_BxSxHxK, v_BxSxHxK, mask_Bx1xTxS, impl)
        return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), k_BxSxHxK, v_BxSxHxK


class Transformer(nnx.Module):
    """Decoder-only transformer over the 267-token ping language."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            # GPT-2 scale: with tied weights this keeps initial logits near zero (loss ~ ln V).
            embedding_init=nnx.initializers.normal(stddev=0.02),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            rngs=rngs,
        )
        self.roles = (
            nnx.Embed(T.N_ROLES, cfg.d_model, embedding_init=nnx.initializers.normal(stddev=0.02),
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
            if cfg.role_embedding else None
        )  # fmt: skip
        self.recall = (
            nnx.Embed(N_RECALL, cfg.d_model, embedding_init=nnx.initializers.normal(stddev=0.02),
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
            if cfg.pair_recall else None
        )  # fmt: skip
        self.recall2 = (  # the recalled RTT's second byte
            nnx.Embed(N_RECALL2, cfg.d_model, embedding_init=nnx.initializers.normal(stddev=0.02),
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
            if cfg.pair_recall else None
        )  # fmt: skip
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = _norm(cfg, rngs)
        self.unembed = None if cfg.tie_embeddings else _linear(cfg.d_model, cfg.vocab_size, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def embed_tokens(
        self, tokens_BxL: jax.Array, roles_BxL: jax.Array, recall_BxLx2: jax.Array | None = None
    ):
        """Input embeddings [B, L, D]: token, plus grammar role (`tokens.token_roles`) and pair recall
        (`pair_recall.pair_recall`, both bytes; None: nothing recalled anywhere) when the config has them.

        "Nothing recalled" (0) has learned embeddings of its own, added at every token that recalls nothing. A
        variant that added nothing there instead learned faster on random tokens but, on the demo, answered
        unseen probes much worse cold (median relative error 0.592 against 0.358, one run each), so it was
        dropped."""
        x_BxLxD = self.embed(tokens_BxL)
        if self.roles is not None:
            x_BxLxD = x_BxLxD + self.roles(roles_BxL)
        if self.recall is not None:
            if recall_BxLx2 is None:
                recall_BxLx2 = jnp.zeros((*tokens_BxL.shape, 2), jnp.int32)
            x_BxLxD = x_BxLxD + self.recall(recall_BxLx2[..., 0]) + self.recall2(recall_BxLx2[..., 1])
        return x_BxLxD

    def logits(self, x_BxLxD: jax.Array) -> jax.Array:
        """Logits [B, L, V] float32 of a residual stream: final norm, then the (tied) unembedding."""
        x_BxLxD = self.final_norm(x_BxLxD).astype(jnp.float32)
        if self.unembed is None:
            # Tied output in float32: V = 267 so this matmul is cheap and the softmax stays exact.
            return x_BxLxD @ self.embed.embedding[...].astype(jnp.float32).T
        return self.unembed(x_BxLxD).astype(jnp.float32)

    def __call__(
        self,
        tokens_BxL: jax.Array,
        segment_ids_BxL: jax.Array | None = None,
        positions_BxL: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        """Logits [B, L, V] float32; causal within each segment (segment 0 = padding)."""
        b, seq = tokens_BxL.shape
        if seq > self.cfg.max_len:
            raise ValueError(f"sequence of {seq} tokens exceeds max_len {self.cfg.max_len}")
        if segment_ids_BxL is None:
            segment_ids_BxL = jnp.ones((b, seq), jnp.int32)
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (b, seq))
        causal_LxL = jnp.tril(jnp.ones((seq, seq), bool))
        same_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
        mask_Bx1xLxL = (causal_LxL[None] & same_BxLxL)[:, None]
        resolved = resolve_attention(self.cfg)
        impl = "cudnn" if resolved != "xla" and _on_gpu() else "xla"  # the masked kernel (and fallback)
        packed = (
            packed_segments(segment_ids_BxL, self.cfg.max_segments) if resolved == "cudnn_packed" else None
        )
        starts_BxL = positions_BxL == 0
        roles_BxL = T.token_roles(tokens_BxL, jnp, starts_BxL=starts_BxL)
        recall_BxLx2 = None
        if self.recall is not None:
            recall_BxLx2 = pair_recall(tokens_BxL, roles_BxL, starts_BxL, jnp)
            if not deterministic and self.cfg.recall_dropout > 0:
                rngs = self.dropout.rngs
                key = rngs["dropout"]() if isinstance(rngs, nnx.Rngs) else rngs()
                hide = jax.random.bernoulli(key, self.cfg.recall_dropout, recall_BxLx2.shape[:-1])
                recall_BxLx2 = jnp.where(hide[..., None], 0, recall_BxLx2)
        x_BxLxD = self.dropout(
            self.embed_tokens(tokens_BxL, roles_BxL, recall_BxLx2), deterministic=deterministic
        )
        for block in self.blocks:
            x_BxLxD = block(
                x_BxLxD, positions_BxL, mask_Bx1xLxL, deterministic=deterministic, impl=impl, packed=packed
            )
        return self.logits(x_BxLxD)

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` tokens."""
        max_len = max_len or self.cfg.max_len
        shape = (self.cfg.n_layers, batch, max_len, self.cfg.n_heads, self.cfg.d_head)
        zeros = jnp.zeros(shape, self.cfg.compute_dtype)
        return KVCache(
            k=zeros,
            v=zeros,
            length=jnp.zeros((), jnp.int32),
            role=jnp.full((batch,), -1, jnp.int32),
            tokens=jnp.zeros((batch, max_len), jnp.int32) if self.recall is not None else None,
        )

    def decode(self, tokens_BxT: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Append T tokens after the cached ones; logits [B, T, V] float32 and the new cache (no dropout).

        Writing past the cache's capacity is not checked under jit (dynamic_update_slice clamps), so the
        caller keeps length + T <= max_len.
        """
        b, t = tokens_BxT.shape
        s = cache.k.shape[2]
        start = cache.length
        positions_BxT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
        # Query i (absolute position start+i) sees every key at position <= start+i.
        mask_TxS = jnp.arange(s)[None, :] <= (start + jnp.arange(t))[:, None]
        mask_Bx1xTxS = jnp.broadcast_to(mask_TxS, (b, 1, t, s))
        roles_BxT = (
            T.token_roles(tokens_BxT, jnp)
            if cache.role is None
            else T.continue_roles(cache.role, tokens_BxT, jnp)
        )
        history = recall_BxTx2 = None
        if self.recall is not None and cache.tokens is not None:  # the new tokens after the cached ones
            history = jax.lax.dynamic_update_slice(cache.tokens, tokens_BxT.astype(jnp.int32), (0, start))
            recall_BxTx2 = pair_recall(history, T.token_roles(history, jnp), None, jnp, last=t, at=start)
        x_BxTxD = self.embed_tokens(tokens_BxT, roles_BxT, recall_BxTx2)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x_BxTxD, k, v = block.decode(x_BxTxD, positions_BxT, cache.k[i], cache.v[i], start, mask_Bx1xTxS)
            ks.append(k)
            vs.append(v)
        new_cache = KVCache(
            k=jnp.stack(ks), v=jnp.stack(vs), length=start + t, role=roles_BxT[:, -1], tokens=history
        )
        return self.logits(x_BxTxD), new_cache


@nnx.jit
def decode_jit(model: Transformer, tokens_BxT: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Jitted `model.decode` (retraces once per distinct T and cache shape)."""
    return model.decode(tokens_BxT, cache)


@nnx.jit
def forward_jit(model: Transformer, tokens_BxL, segment_ids_BxL=None, positions_BxL=None) -> jax.Array:
    """Jitted deterministic forward pass."""
    return model(tokens_BxL, segment_ids_BxL, positions_BxL, deterministic=True)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_params(cfg: ModelConfig) -> int:
    """Parameter count of a config without allocating it (jax.eval_shape)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return count_params(abstract)


if __name__ == "__main__":
    for name, tier_cfg in TIERS.items():
        print(f"{name:6s} {abstract_params(tier_cfg):>12,d} params")

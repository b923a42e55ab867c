"""The packed attention layout: run lengths and offsets mean exactly the model's mask, the model routes
through the packed kernel when rows fit and through the masked one when they do not.

cuDNN itself needs a GPU (`benchmarks/attention_check.py` compares it with XLA there); here the packed kernel
is stood in for by an XLA function of the same packed description, so what is tested is the description and
the routing, with the real XLA path as the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import pingllm_core.model.transformer as model_lib
from pingllm_core.model.transformer import (
    PackedSegments,
    Transformer,
    model_config,
    packed_segments,
    resolve_attention,
)


def _row(lengths: list[int], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """segment ids 1..k for contexts of the given lengths then `pad` padding tokens; positions restart."""
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad)]).astype(
        np.int32
    )
    pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad)]).astype(np.int32)
    return seg, pos


def packed_mask(packed: PackedSegments, seq: int) -> jax.Array:
    """The [B, 1, L, L] boolean mask a packed layout means (causal within each run)."""
    m = packed.seqlen_BxM.shape[1]
    pos_L = jnp.arange(seq, dtype=jnp.int32)
    start_BxM, length_BxM = packed.offsets_BxM1[:, :m], packed.seqlen_BxM
    inside_BxLxM = (pos_L[None, :, None] >= start_BxM[:, None, :]) & (
        pos_L[None, :, None] < (start_BxM + length_BxM)[:, None, :]
    )
    run_BxL = jnp.where(inside_BxLxM.any(-1), jnp.argmax(inside_BxLxM, -1), -1)  # -1: in no run
    same_BxLxL = (run_BxL[:, :, None] == run_BxL[:, None, :]) & (run_BxL[:, :, None] >= 0)
    return (same_BxLxL & (pos_L[None, :, None] >= pos_L[None, None, :]))[:, None]


def _model_mask(seg_BxL: np.ndarray) -> np.ndarray:
    seq = seg_BxL.shape[1]
    return (np.tril(np.ones((seq, seq), bool))[None] & (seg_BxL[:, :, None] == seg_BxL[:, None, :]))[:, None]


rows = st.lists(st.integers(1, 12), min_size=1, max_size=9).flatmap(
    lambda lengths: st.tuples(st.just(lengths), st.integers(0, 6))
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(batch=st.lists(rows, min_size=1, max_size=4), slots=st.integers(2, 12))
def test_packed_description_means_the_model_mask(batch, slots):
    seq = max(sum(lengths) + pad for lengths, pad in batch)
    seg = np.stack([np.pad(_row(lengths, pad)[0], (0, seq - sum(lengths) - pad)) for lengths, pad in batch])
    packed = packed_segments(jnp.asarray(seg), slots)
    runs = [len(lengths) + (1 if seq > sum(lengths) else 0) for lengths, _ in batch]
    assert bool(packed.fits) == (max(runs) <= slots)
    seqlen, offsets = np.asarray(packed.seqlen_BxM), np.asarray(packed.offsets_BxM1)
    assert seqlen.shape == (len(batch), slots) and offsets.shape == (len(batch), slots + 1)
    assert (offsets[:, -1] == -1).all()
    for b, n in enumerate(runs):
        live = min(n, slots)
        assert (seqlen[b, live:] == -1).all() and (offsets[b, live:] == -1).all()
        assert (seqlen[b, :live] > 0).all() and (offsets[b, 0] == 0)
        assert (np.diff(offsets[b, :live]) == seqlen[b, : live - 1]).all()  # runs follow each other
    if packed.fits:
        assert (seqlen.clip(0).sum(1) == seq).all()  # every token, padding too, is in one run
        np.testing.assert_array_equal(np.asarray(packed_mask(packed, seq)), _model_mask(seg))


def _emulated_packed_kernel(q, k, v, packed):
    """The packed kernel's function, computed by XLA from the packed description alone."""
    mask = packed_mask(packed, q.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def _batch():
    rng = np.random.default_rng(3)
    parts = [_row([9, 30, 5], 20), _row([64], 0), _row([3] * 12 + [20], 8)]  # the last row has 14 runs
    seg, pos = (jnp.asarray(np.stack(x)) for x in zip(*parts, strict=True))
    return jnp.asarray(rng.integers(0, 267, seg.shape), jnp.int32), seg, pos


def _logits(monkeypatch, impl: str, slots: int, kernel) -> np.ndarray:
    monkeypatch.setattr(model_lib, "resolve_attention", lambda cfg: impl)
    monkeypatch.setattr(model_lib, "_cudnn_packed_attention", kernel)
    cfg = model_config("tiny", dtype="float32", dropout=0.0, max_segments=slots)
    tokens, seg, pos = _batch()
    return np.asarray(Transformer(cfg, rngs=nnx.Rngs(0))(tokens, seg, pos))


def test_model_routes_through_the_packed_kernel_and_falls_back_when_a_row_overflows(monkeypatch):
    reference = _logits(monkeypatch, "xla", 64, _emulated_packed_kernel)
    # Rows fit 16 slots: the packed kernel runs, and its description gives the XLA path's logits.
    np.testing.assert_allclose(
        _logits(monkeypatch, "cudnn_packed", 16, _emulated_packed_kernel), reference, atol=1e-5
    )

    def zero_kernel(q, k, v, packed):
        return jnp.zeros_like(q)

    # A kernel that computes nothing changes the logits when it runs...
    assert np.abs(_logits(monkeypatch, "cudnn_packed", 16, zero_kernel) - reference).max() > 1e-2
    # ...and is not run when one row (14 runs) has more runs than the 8 slots: the masked path answers.
    np.testing.assert_allclose(_logits(monkeypatch, "cudnn_packed", 8, zero_kernel), reference, atol=1e-6)


def test_attention_choices_resolve_to_xla_off_gpu_so_gpu_configs_still_load():
    assert jax.default_backend() != "gpu"
    tokens, seg, pos = _batch()
    out = {}
    for impl in (None, "xla", "cudnn", "cudnn_packed"):
        cfg = model_config("tiny", dtype="float32", dropout=0.0, attention_impl=impl)
        assert resolve_attention(cfg) == "xla"
        out[impl] = np.asarray(Transformer(cfg, rngs=nnx.Rngs(0))(tokens, seg, pos))
    for impl in ("xla", "cudnn", "cudnn_packed"):
        np.testing.assert_array_equal(out[impl], out[None])
    with pytest.raises(ValueError, match="attention_impl"):
        model_config("tiny", attention_impl="flash")
    with pytest.raises(ValueError, match="max_segments"):
        model_config("tiny", max_segments=1)

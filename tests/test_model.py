"""Behaviour of the transformer: shapes, causality, segment isolation, KV-cache decode, tiers."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pingllm_core.model.transformer import (
    TIERS,
    ModelConfig,
    Transformer,
    abstract_params,
    count_params,
    decode_jit,
    forward_jit,
    model_config,
)

F32 = dict(dtype="float32", dropout=0.0)


def _model(seed: int = 0, **overrides) -> Transformer:
    return Transformer(model_config("tiny", **{**F32, **overrides}), rngs=nnx.Rngs(seed))


def _tokens(b: int, seq: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 267, (b, seq)), jnp.int32)


def test_logits_are_float32_with_vocab_width_in_bf16_compute():
    model = Transformer(model_config("tiny"), rngs=nnx.Rngs(0))
    logits = model(_tokens(2, 16))
    assert logits.shape == (2, 16, 267)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_initial_predictions_are_near_uniform():
    # Cross-entropy at init should be close to ln(267) ~ 5.59 so training starts from a sane point.
    model = _model()
    tok = _tokens(4, 64)
    logp = jax.nn.log_softmax(model(tok)[:, :-1])
    nll = -jnp.take_along_axis(logp, tok[:, 1:, None], axis=-1).mean()
    assert abs(float(nll) - math.log(267)) < 0.3


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = _model()
    tok = _tokens(1, 32)
    changed = tok.at[0, 20].set((tok[0, 20] + 1) % 267)
    a, b = model(tok), model(changed)
    np.testing.assert_allclose(a[0, :20], b[0, :20], atol=1e-5)
    assert float(jnp.abs(a[0, 20:] - b[0, 20:]).max()) > 1e-4


def test_tokens_in_another_segment_do_not_affect_a_segment():
    model = _model()
    seg = jnp.asarray([[1] * 10 + [2] * 12 + [0] * 10], jnp.int32)
    pos = jnp.asarray([list(range(10)) + list(range(12)) + list(range(10))], jnp.int32)
    tok = _tokens(1, 32)
    changed = tok.at[0, 10:22].set((tok[0, 10:22] + 7) % 267)
    a, b = model(tok, seg, pos), model(changed, seg, pos)
    np.testing.assert_allclose(a[0, :10], b[0, :10], atol=1e-5)
    np.testing.assert_allclose(a[0, 22:], b[0, 22:], atol=1e-5)  # padding segment is isolated too
    # Segment 1 logits also don't depend on later segment 1 position offsets: a packed segment equals
    # the same tokens run alone from position 0.
    alone = model(tok[:, 10:22])
    np.testing.assert_allclose(a[0, 10:22], alone[0], atol=1e-4)


def test_dropout_changes_training_logits_but_not_eval_logits():
    model = _model(dropout=0.5)
    tok = _tokens(1, 16)
    np.testing.assert_allclose(model(tok), model(tok), atol=0)
    assert float(jnp.abs(model(tok, deterministic=False) - model(tok)).max()) > 1e-3


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_kv_cache_decode_matches_full_forward(dtype, atol):
    model = _model(dtype=dtype)
    tok = _tokens(2, 24, seed=3)
    full = model(tok)
    cache = model.init_cache(2, 32)
    logits, cache = model.decode(tok[:, :16], cache)  # prefill
    steps = [logits]
    for t in range(16, 24):  # single-token steps through the jitted path
        logits, cache = decode_jit(model, tok[:, t : t + 1], cache)
        steps.append(logits)
    assert int(cache.length) == 24
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=atol)


def test_jitted_forward_equals_eager_forward():
    model = _model()
    tok = _tokens(2, 16)
    np.testing.assert_allclose(forward_jit(model, tok), model(tok), atol=1e-5)


def test_tiny_decode_latency_per_token_on_cpu():
    model = Transformer(model_config("tiny"), rngs=nnx.Rngs(0))
    cache = model.init_cache(1, 256)
    tok = _tokens(1, 1)
    logits, cache = decode_jit(model, tok, cache)  # compile
    logits.block_until_ready()
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        logits, cache = decode_jit(model, tok, cache)
    logits.block_until_ready()
    ms = (time.perf_counter() - t0) / n * 1e3
    print(f"tiny decode latency {ms:.2f} ms/token (CPU)")
    assert ms < 100.0


def test_tier_parameter_counts_match_the_spec():
    assert abstract_params(TIERS["base"]) == pytest.approx(85e6, rel=0.03)
    assert abstract_params(TIERS["small"]) == pytest.approx(10e6, rel=0.15)
    assert count_params(_model()) == abstract_params(model_config("tiny"))


def test_untied_embeddings_add_an_output_matrix():
    tied = abstract_params(model_config("tiny"))
    untied = abstract_params(model_config("tiny", tie_embeddings=False))
    assert untied - tied == 64 * 267


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="d_head"):
        ModelConfig(d_head=15)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="int8")
    with pytest.raises(ValueError, match="tier"):
        model_config("huge")


def test_config_round_trips_through_dict():
    cfg = model_config("small", dropout=0.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg

"""Pair recall: the feature against a plain loop, its windows, and every decoding path against the forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pingllm_core.data import tokens as T
from pingllm_core.data.pair_recall import RECALL_FAILED, pair_recall, recall_after
from pingllm_core.model.transformer import Transformer, model_config
from pingllm_core.query.context import make_measurements
from pingllm_core.query.engine import QueryEngine

SRCS = ["193.0.14.129", "193.0.14.130", "2001:db8::1"]
DSTS = ["8.8.8.8", "8.8.8.9", "9.8.8.8", "2001:4860::8888", "2001:db8::1"]
QUERY_ORDER = [T.FIELD_SRC, T.FIELD_DST, T.FIELD_TIME, T.FIELD_RESULT]


def reference(m: T.Measurements, order: np.ndarray, offsets: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The recall by its definition, one measurement at a time: [L, 2] (first byte or failed, second byte)."""
    out = np.zeros((len(tokens), 2), np.int32)
    for i in range(len(m)):
        fields = list(order[i])
        result = fields.index(T.FIELD_RESULT)
        if m.rtt[i] < 0 or fields.index(T.FIELD_SRC) > result or fields.index(T.FIELD_DST) > result:
            continue  # no <RttStart>, or an address after it
        end = offsets[i + 1] if i + 1 < len(m) else len(tokens)
        at = offsets[i] + list(tokens[offsets[i] : end]).index(T.RTT_START)
        for j in range(i):
            same = (m.src[j] == m.src[i]).all() and (m.dst[j] == m.dst[i]).all()
            if same and m.src_v6[j] == m.src_v6[i] and m.dst_v6[j] == m.dst_v6[i]:
                code = int(T.encode_rtt_ms(np.array([max(m.rtt[j], 0.0)]))[0])
                out[at] = (RECALL_FAILED, 0) if m.rtt[j] < 0 else ((code >> 8) + 1, (code & 255) + 1)
    return out


def encoded(rng: np.random.Generator, n: int, shuffle: float):
    rtt = np.where(rng.random(n) < 0.15, -1.0, rng.uniform(0.5, 400.0, n))
    m = T.Measurements.from_strings(
        1_700_000_000 + np.arange(n) * 60, rng.choice(SRCS, n), rng.choice(DSTS, n), rtt
    )
    order = np.array([rng.permutation(4) if rng.random() < shuffle else QUERY_ORDER for _ in range(n)])
    tokens, offsets = T.encode_measurements_with_offsets(m, rng.random(n) < 0.7, order)
    return m, order, offsets, tokens.astype(np.int32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 24), shuffle=st.sampled_from([0.0, 0.3, 1.0]))
def test_recall_is_the_last_same_pair_result_before_each_rtt(seed, n, shuffle):
    m, order, offsets, tokens = encoded(np.random.default_rng(seed), n, shuffle)
    want = reference(m, order, offsets, tokens)
    t = tokens[None]
    np.testing.assert_array_equal(pair_recall(t, T.token_roles(t))[0], want)
    for k in {1, min(7, len(tokens))}:  # the last k tokens: the tail of the same computation
        np.testing.assert_array_equal(pair_recall(t, T.token_roles(t), last=k)[0], want[-k:])


def test_recall_is_the_same_in_jax_and_from_a_traced_position():
    window = jax.jit(lambda x, a: pair_recall(x, T.token_roles(x, jnp), None, jnp, last=9, at=a))
    for seed in range(4):
        m, order, offsets, tokens = encoded(np.random.default_rng(seed), 20, 0.3)
        want = reference(m, order, offsets, tokens)
        tj = jnp.asarray(tokens[:300][None])
        np.testing.assert_array_equal(
            np.asarray(pair_recall(tj, T.token_roles(tj, jnp), None, jnp))[0], want[:300]
        )
        for at in (0, 101, 250):
            np.testing.assert_array_equal(np.asarray(window(tj, at))[0], want[at : at + 9])


def test_recall_stops_at_context_starts_and_after_a_shared_prefix():
    rng = np.random.default_rng(3)
    m, order, offsets, tokens = encoded(rng, 24, 0.0)
    want = reference(m, order, offsets, tokens)
    assert (want[:, 0] > 0).sum() >= 5  # the test means something: some RTTs recall an earlier one
    # two contexts packed in one row: the second (the same tokens again) recalls nothing from the first
    packed = np.concatenate([tokens, tokens])[None]
    starts = np.zeros_like(packed, bool)
    starts[0, [0, len(tokens)]] = True
    got = pair_recall(packed, T.token_roles(packed, starts_BxL=starts), starts)[0]
    np.testing.assert_array_equal(got, np.concatenate([want, want]))
    # rows after one prefix (ranking): each row's last token, as if the whole sequence were one
    cut = offsets[-1]
    last_rtt = np.flatnonzero(tokens == T.RTT_START)
    assert last_rtt[-1] >= cut  # the last measurement has an RTT
    rows = np.stack([tokens[cut : last_rtt[-1] + 1]] * 2)
    np.testing.assert_array_equal(recall_after(tokens[:cut], rows), np.stack([want[last_rtt[-1]]] * 2))


def loud_engine() -> QueryEngine:
    """A tiny untrained model whose recall embedding is large, so that a wrong recall moves every answer."""
    cfg = model_config("tiny", max_len=128)
    model = Transformer(cfg, rngs=nnx.Rngs(4))
    model.recall.embedding[...] = model.recall.embedding[...] * 100.0
    model.recall2.embedding[...] = model.recall2.embedding[...] * 100.0
    return QueryEngine(model, cfg)


def test_every_decoding_path_sees_the_recall_the_forward_sees():
    engine = loud_engine()
    t0 = 1_700_000_000
    ctx = make_measurements([t0, t0 + 60, t0 + 120], ["193.0.14.129"] * 3, ["8.8.8.8", "9.9.9.9", "8.8.8.8"],
                            [12.5, -1.0, 13.0])  # fmt: skip
    query = make_measurements([t0 + 600], ["193.0.14.129"], ["8.8.8.8"], [12.5])
    seq = engine.build_prompt(query, True, ctx, reserve=0, cut=0).tokens.astype(np.int32)
    recall = pair_recall(seq[None], T.token_roles(seq[None]))[0]
    assert (recall[:, 0] > 0).sum() == 2  # the second 8.8.8.8 of the context and the query
    assert (recall[:, 1] > 0).sum() == 2  # and both have a second byte (the recalled RTTs did not fail)

    def forward(tokens):
        return np.asarray(jax.nn.log_softmax(engine.model(jnp.asarray(tokens[None]))[0]))

    want = forward(seq)
    # prefill
    np.testing.assert_allclose(engine.prefill_all(seq, extra=0)[0], want, atol=1e-4)
    # the model's own KV-cache decode, token by token from a short prompt (the inverse queries' path)
    start = len(seq) - 24  # the query and the end of the last context measurement, one token per call
    logp, cache = engine.prefill(seq[:start], extra=len(seq))
    np.testing.assert_allclose(logp, want[start - 1], atol=1e-4)
    for i in range(start, len(seq)):
        logp, cache = engine.extend(cache, np.zeros(1, np.int32), seq[None, i : i + 1])
        np.testing.assert_allclose(logp[0], want[i], atol=1e-4, err_msg=f"token {i}")
    # ranking (host-side recall at each candidate's <RttStart>) equals predict, and the recall matters
    dsts = ["8.8.8.8", "9.9.9.9", "1.1.1.1"]
    ranked = {r.dst: r for r in engine.rank("193.0.14.129", dsts, time=t0 + 600, context=ctx)}
    for d in dsts:
        pred = engine.predict("193.0.14.129", d, time=t0 + 600, context=ctx)
        assert np.isclose(ranked[d].median, pred.median, rtol=2e-3)
        assert np.isclose(ranked[d].p_fail, pred.p_fail, rtol=1e-4)
    # and each recalled byte is what moves the answer: the same tokens with a blind embedding answer otherwise
    at = np.flatnonzero(recall[:, 0])
    for emb in (engine.model.recall, engine.model.recall2):
        table = emb.embedding[...]
        emb.embedding[...] = jnp.broadcast_to(table[:1], table.shape)
        blind = forward(seq)
        emb.embedding[...] = table
        moved = np.abs(blind - want).max(axis=1)
        assert moved[at].min() > 0.1 and moved[: at[0]].max() < 1e-5  # nothing moves before the first recall

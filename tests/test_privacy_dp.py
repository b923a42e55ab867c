"""Probe-level DP-SGD: the accountant against published values, the private step's clipping and noise,
Poisson sampling of probes, and the before/after experiment end to end on small records."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from pingllm_core.data import records, tokens
from pingllm_core.evaluation import figures
from pingllm_core.experiments import privacy, privacy_dp
from pingllm_core.model.transformer import Transformer, model_config
from tests.helpers.splits import make_record_splits

# ------------------------------------------------------------------------------------------ accounting


def test_full_batch_is_the_gaussian_mechanism() -> None:
    orders = [2, 3, 8, 32]
    for sigma in (0.7, 1.0, 3.0):
        rdp = privacy_dp.rdp_sampled_gaussian(1.0, sigma, orders)
        np.testing.assert_allclose(rdp, np.array(orders) / (2 * sigma**2), rtol=1e-12)


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "published"),
    [
        (0.01, 4.0, 10_000, 1.26),  # Abadi et al. 2016, Sec. 5: 100 epochs at q = 0.01, sigma = 4
        (250 / 60_000, 1.3, 3_600, 1.18),  # TF Privacy MNIST tutorial: 15 epochs, batch 250, sigma 1.3
        (256 / 60_000, 1.1, 14_062, 3.01),  # the same with 60 epochs, batch 256, sigma 1.1
    ],
)
def test_epsilon_matches_published_accounting(q, sigma, steps, published) -> None:
    eps, order = privacy_dp.dp_epsilon(q, sigma, steps, 1e-5)
    assert eps == pytest.approx(published, abs=0.01)
    assert 2 <= order <= 256


def test_epsilon_moves_the_right_way() -> None:
    base = privacy_dp.dp_epsilon(0.1, 1.0, 100, 1e-5)[0]
    assert privacy_dp.dp_epsilon(0.1, 1.0, 400, 1e-5)[0] > base  # more steps
    assert privacy_dp.dp_epsilon(0.1, 2.0, 100, 1e-5)[0] < base  # more noise
    assert privacy_dp.dp_epsilon(0.02, 1.0, 100, 1e-5)[0] < base  # rarer sampling
    assert privacy_dp.dp_epsilon(0.1, 1.0, 100, 1e-8)[0] > base  # smaller delta
    assert privacy_dp.dp_epsilon(0.1, 0.0, 100, 1e-5)[0] == math.inf
    with pytest.raises(ValueError, match="sigma"):
        privacy_dp.rdp_sampled_gaussian(0.0, 1.0, [2])
    with pytest.raises(ValueError, match="integers"):
        privacy_dp.rdp_sampled_gaussian(0.5, 1.0, [1.5])


def test_batch_slots_cover_the_binomial_tail() -> None:
    assert privacy_dp.batch_slots(24, 1 / 3) >= 8 + 4 * math.sqrt(24 * (1 / 3) * (2 / 3))
    assert privacy_dp.batch_slots(10, 1.0) == 10
    assert privacy_dp.batch_slots(1000, 0.001) >= 1


# ----------------------------------------------------------------------------------------------- step

SEQ = 32


def _model_parts():
    cfg = model_config("tiny", max_len=SEQ, dropout=0.0, dtype="float32", n_layers=1, d_mlp=64)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    return nnx.split(model, nnx.Param, ...)


def _batch(rows: int, live: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = {
        "tokens": rng.integers(tokens.BYTE0, tokens.VOCAB_SIZE, (rows, SEQ)).astype(np.int32),
        "segment_ids": np.zeros((rows, SEQ), np.int32),
        "positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), (rows, SEQ)).copy(),
        "weights": np.zeros((rows, SEQ), np.float32),
    }
    b["segment_ids"][:live] = 1
    b["weights"][:live, 1:] = 1.0
    b["tokens"][live:] = 0
    return b


def _delta(graphdef, params, rest, batch, clip, sigma, expected, key=0):
    """Parameter change of one SGD(lr=1) step, i.e. minus the private gradient, flattened."""
    tx = optax.sgd(1.0)
    step = privacy_dp.make_private_step(graphdef, rest, tx, clip, sigma, expected)
    before = jax.tree.map(lambda x: np.array(x), params)
    copy = jax.tree.map(lambda x: jax.numpy.array(x), params)
    after, _, metrics = step(copy, tx.init(copy), batch, jax.random.key(key))
    flat = [
        np.ravel(np.asarray(a) - b)
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    ]
    return np.concatenate(flat), {k: float(v) for k, v in metrics.items()}


def test_plain_step_is_the_mean_row_gradient() -> None:
    graphdef, params, rest = _model_parts()
    batch = _batch(4, 3)
    delta, metrics = _delta(graphdef, params, rest, batch, None, 0.0, expected=3.0)

    def total(p):
        out = 0.0
        for i in range(3):
            m = nnx.merge(graphdef, p, rest)
            logits = m(batch["tokens"][i : i + 1], batch["segment_ids"][i : i + 1],
                       batch["positions"][i : i + 1], deterministic=True)  # fmt: skip
            lp = jax.nn.log_softmax(logits[0, :-1])
            out += -lp[np.arange(SEQ - 1), batch["tokens"][i, 1:]].mean()
        return out / 3.0

    want = -np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.jit(jax.grad(total))(params))])
    np.testing.assert_allclose(delta, want, rtol=2e-4, atol=1e-7)
    assert metrics["rows"] == 3 and metrics["clipped"] == 0.0


def test_clipping_bounds_every_probe_and_empty_rows_do_nothing() -> None:
    graphdef, params, rest = _model_parts()
    clip = 0.05
    delta, metrics = _delta(graphdef, params, rest, _batch(4, 1), clip, 0.0, expected=1.0)
    assert metrics["row_grad_norm"] > clip and metrics["clipped"] == 1.0
    assert np.linalg.norm(delta) == pytest.approx(clip, rel=1e-4)  # one row, clipped to exactly C
    three, _ = _delta(graphdef, params, rest, _batch(4, 3), clip, 0.0, expected=1.0)
    assert np.linalg.norm(three) <= 3 * clip * (1 + 1e-5)
    empty, _ = _delta(graphdef, params, rest, _batch(4, 0), clip, 0.0, expected=1.0)
    assert np.all(empty == 0.0)


def test_noise_has_the_promised_scale_and_varies_with_the_key() -> None:
    graphdef, params, rest = _model_parts()
    clip, sigma, expected = 1e-6, 2.0, 4.0
    a, _ = _delta(graphdef, params, rest, _batch(4, 0), clip, sigma, expected, key=1)
    b, _ = _delta(graphdef, params, rest, _batch(4, 0), clip, sigma, expected, key=2)
    assert np.std(a) == pytest.approx(sigma * clip / expected, rel=0.02)  # ~100k coordinates
    assert abs(np.mean(a)) < 5 * sigma * clip / expected / math.sqrt(a.size)
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="clipping norm"):
        privacy_dp.make_private_step(graphdef, rest, optax.sgd(1.0), None, 1.0, 1.0)


# ------------------------------------------------------------------------------------- records and run

MEMBERS = [(p, 1, 40 + 7 * i) for i, p in enumerate(range(101, 113))]
HELDOUT = [(p, 1, 50 + 5 * i) for i, p in enumerate(range(201, 207))]


@pytest.fixture(scope="module")
def record_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dp")
    splits = [("train", MEMBERS, 3), ("heldout_probes", HELDOUT, 4)]
    train, heldout = make_record_splits(root, splits, records.RecordsConfig(shards=2))
    return train, heldout


def test_sampler_draws_each_probe_with_rate_q(record_dirs) -> None:
    source = records.ProbeRecordSource(record_dirs[0])
    ids, unit_rows = privacy.probe_units(record_dirs[0])
    sampler = privacy_dp.ProbeSampler(source, unit_rows, q=0.25, seq_len=128, seed=0)
    counts = []
    for _ in range(200):
        b = sampler.next_batch()
        live = b["weights"].sum(axis=1) > 0
        counts.append(int(live.sum()))
        assert b["tokens"].shape[0] % privacy_dp.ROW_BUCKET == 0 or b["tokens"].shape[0] == sampler.slots
        for i in np.flatnonzero(live):  # one probe's whole, timestamped measurements per row
            n = int(b["segment_ids"][i].sum())
            m, has_time, _ = tokens.decode_tokens(b["tokens"][i, :n])
            assert has_time.all() and np.all(np.diff(m.time) >= 0) and len(m) > 0
        assert np.all(b["weights"][~live] == 0) and np.all(b["segment_ids"][~live] == 0)
    mean = np.mean(counts)
    assert mean == pytest.approx(0.25 * len(ids), abs=4 * math.sqrt(len(ids) * 0.25 * 0.75 / 200))
    assert sampler.truncated_draws == 0
    again = privacy_dp.ProbeSampler(source, unit_rows, q=0.25, seq_len=128, seed=0)
    np.testing.assert_array_equal(again.next_batch()["tokens"], privacy_dp.ProbeSampler(
        source, unit_rows, q=0.25, seq_len=128, seed=0).next_batch()["tokens"])  # fmt: skip


@pytest.mark.slow
def test_before_after_experiment(record_dirs, tmp_path: Path) -> None:
    cfg = privacy_dp.MitigationConfig(n_members=6, expected_batch=3, steps=6, seq_len=128, max_nonmembers=20,
                                      contexts_per_probe=1, noise_multipliers=(1.0,))  # fmt: skip
    logs: list[str] = []
    runs = privacy_dp.run_mitigation(record_dirs[0], record_dirs[1], cfg, logs.append)
    assert [r.name for r in runs] == ["plain", "DP-SGD sigma=1 C=1"]
    assert privacy_dp.variant_name(0.5, 0.0) == "clip only C=0.5"  # sigma 0: clipping, no guarantee
    assert runs[0].epsilon == math.inf
    assert runs[1].epsilon == pytest.approx(privacy_dp.dp_epsilon(0.5, 1.0, 6, 1e-5)[0])
    for r in runs:
        assert r.audit["n_members"] == 6
        assert r.audit["n_nonmembers"] == len(MEMBERS) - 6 + len(HELDOUT)
        assert (
            0 <= r.audit["auc"] <= 1 and np.isfinite([r.member_nll, r.heldout_nll, r.heldout_rtt_nll]).all()
        )
    # Same draws, different updates: the runs differ only by the mitigation.
    assert runs[0].final_loss != runs[1].final_loss
    assert any("DP-SGD sigma=1 C=1: membership AUC" in m for m in logs)
    table = privacy_dp.markdown_table(runs)
    assert table.count("\n") == 2 + len(runs) and "inf (no guarantee)" in table
    fig = figures.fig_mitigation(runs, tmp_path / "m.png")
    assert fig.read_bytes()[:4] == b"\x89PNG" and fig.stat().st_size > 5000
    with pytest.raises(ValueError, match="needs more than"):
        privacy_dp.run_mitigation(record_dirs[0], record_dirs[1], privacy_dp.MitigationConfig(n_members=12))


def test_select_restricts_the_audited_probes(record_dirs) -> None:
    model = Transformer(model_config("tiny", max_len=128), rngs=nnx.Rngs(0))
    keep = {101, 105, 110}
    table = privacy.probe_loss_table(model, record_dirs[0], 50, 1, 128, select=keep.__contains__)
    assert set(table.prb_id.tolist()) == keep
    with pytest.raises(ValueError, match="no probe"):
        privacy.probe_loss_table(model, record_dirs[0], 50, 1, 128, select=lambda p: False)

"""Distilled tiers: the loss by hand, distillation learning a fixed teacher, loading the student, the table."""

import dataclasses
import math

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pingllm_core.evaluation.evaluate import load_split
from pingllm_core.experiments.distill import (
    TEST_STUDENT,
    DistillConfig,
    distill,
    distill_loss,
    student_config,
)
from pingllm_core.experiments.distill_tiers import TiersConfig, tier_table
from pingllm_core.model.checkpoint import load_checkpoint
from pingllm_core.model.train import synthetic_batches
from pingllm_core.model.transformer import Transformer, count_params, model_config
from pingllm_core.query.engine import QueryEngine
from tests.helpers.splits import make_split

SEQ = 64
BATCHES = synthetic_batches(8, 4, SEQ, seed=0)
STEPS = 40  # distillation steps of the fixture's student
TEACHER_CFG = model_config("tiny", max_len=SEQ, dtype="float32")
STUDENT_CFG = model_config("tiny", max_len=SEQ, dtype="float32", **TEST_STUDENT)


def _make_iter(batches=BATCHES):
    return lambda: iter(grain.MapDataset.source(batches).repeat().to_iter_dataset())


def _sharp_teacher() -> Transformer:
    """A random teacher with confident, input-dependent predictions (scaled-up tied embedding)."""
    teacher = Transformer(TEACHER_CFG, rngs=nnx.Rngs(7))
    teacher.embed.embedding.value = teacher.embed.embedding.value * 15.0
    return teacher


# ------------------------------------------------------------------------------------------- the loss


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    b, seq, v = 2, 5, 7
    student = rng.normal(size=(b, seq, v)).astype(np.float32)
    teacher = rng.normal(size=(b, seq, v)).astype(np.float32) * 2
    batch = {"tokens": rng.integers(0, v, (b, seq)).astype(np.int32),
             "weights": rng.integers(0, 2, (b, seq)).astype(np.float32)}  # fmt: skip
    batch["weights"][0, 1] = 1.0
    w = batch["weights"][:, 1:]
    logq1 = _log_softmax(student[:, :-1].astype(np.float64))
    ce = -(np.take_along_axis(logq1, batch["tokens"][:, 1:, None], -1)[..., 0] * w).sum() / w.sum()
    for temp, alpha in ((1.0, 0.5), (2.0, 0.3), (4.0, 1.0)):
        logp = _log_softmax(teacher[:, :-1].astype(np.float64) / temp)
        logq = _log_softmax(student[:, :-1].astype(np.float64) / temp)
        kl = ((np.exp(logp) * (logp - logq)).sum(-1) * w).sum() / w.sum()
        loss, aux = distill_loss(jnp.asarray(student), jnp.asarray(teacher), batch, temp, alpha)
        assert float(aux["kl"]) == pytest.approx(kl, rel=1e-4)
        assert float(aux["ce"]) == pytest.approx(ce, rel=1e-5)
        assert float(aux["weighted_tokens"]) == w.sum()
        assert float(loss) == pytest.approx(alpha * temp**2 * kl + (1 - alpha) * ce, rel=1e-4)
    # Student == teacher: the KL term vanishes and only (1 - alpha) * CE is left.
    loss, aux = distill_loss(jnp.asarray(student), jnp.asarray(student), batch, 3.0, 0.25)
    assert abs(float(aux["kl"])) < 1e-6
    assert float(loss) == pytest.approx(0.75 * ce, rel=1e-5)
    # No teacher: plain cross-entropy whatever alpha is; the KL is reported as NaN.
    loss, aux = distill_loss(jnp.asarray(student), None, batch, 2.0, 0.9)
    assert float(loss) == pytest.approx(ce, rel=1e-5) and math.isnan(float(aux["kl"]))


def test_student_config_maps_tiers():
    small = student_config(model_config("base"))
    assert (small.d_model, small.n_layers, small.d_mlp) == (320, 10, 1024)
    assert small.max_len == model_config("base").max_len
    tiny = student_config(model_config("small", max_len=256))
    assert (tiny.d_model, tiny.n_layers, tiny.max_len) == (64, 2, 256)
    test = student_config(model_config("tiny", max_len=512))
    assert (test.d_model, test.n_layers, test.n_heads, test.max_len) == (32, 1, 2, 512)
    assert student_config(model_config("tiny"), d_model=48).d_model == 48


# ------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    teacher = _sharp_teacher()
    ckpt_dir = tmp_path_factory.mktemp("student")
    cfg = DistillConfig(steps=STEPS, lr=1e-2, temperature=1.0, alpha=1.0, warmup_steps=2)
    result = distill(teacher, TEACHER_CFG, STUDENT_CFG, _make_iter(), ckpt_dir, cfg, eval_batches=BATCHES[:2])
    return teacher, result


def test_distillation_reduces_kl_to_a_fixed_teacher(distilled):
    _, result = distilled
    kl = [h["kl"] for h in result.history]
    assert [h["step"] for h in result.history] == list(range(1, STEPS + 1))
    assert kl[0] > 1.0  # the sharp teacher is far from a fresh student
    assert np.mean(kl[-3:]) < 0.75 * kl[0]
    assert result.eval_loss is not None and math.isfinite(result.eval_loss)
    assert result.n_params == count_params(Transformer(STUDENT_CFG, rngs=nnx.Rngs(0)))
    assert result.n_params < count_params(Transformer(TEACHER_CFG, rngs=nnx.Rngs(0))) / 3


def test_saved_student_loads_and_answers_queries(distilled):
    _, result = distilled
    model, cfg, step = load_checkpoint(result.checkpoint)
    assert (cfg, step) == (STUDENT_CFG, STEPS)
    pred = QueryEngine(model, cfg).predict("193.0.14.129", "8.8.8.8", time=1_700_000_000)
    assert pred.probs.sum() == pytest.approx(1.0, abs=1e-9) and 0.0 < pred.p_fail < 1.0
    again = QueryEngine.load(result.checkpoint).predict("193.0.14.129", "8.8.8.8", time=1_700_000_000)
    assert again.median == pred.median
    # Rerunning with the same step count resumes the finished run instead of training again.
    cfg = DistillConfig(STEPS, 1e-2, 1.0, 0.0)
    rerun = distill(None, None, STUDENT_CFG, _make_iter(), result.checkpoint, cfg)
    assert rerun.resumed_from == STEPS and rerun.history == []


def test_scratch_control_is_cross_entropy_only(tmp_path):
    cfg = DistillConfig(steps=1, lr=1e-2, temperature=2.0, alpha=0.5, warmup_steps=0)
    result = distill(None, None, STUDENT_CFG, _make_iter(), tmp_path, cfg)
    assert all(math.isnan(h["kl"]) and h["loss"] == h["ce"] for h in result.history)
    with pytest.raises(ValueError, match="steps > 0"):
        DistillConfig(0, 1e-2, 2.0, 0.5)


# ----------------------------------------------------------------------------------------------- table


@pytest.mark.slow
def test_tier_table_numbers_and_figure(distilled, tmp_path):
    teacher, result = distilled
    student, scfg, _ = load_checkpoint(result.checkpoint)
    make_split(tmp_path / "heldout.parquet", seed=3)
    heldout = load_split(tmp_path / "heldout.parquet")
    heldout = heldout[~heldout.dst_addr.str.contains(":")]  # one address family: fewer shapes to compile
    models = [("teacher", teacher, TEACHER_CFG), ("distilled", student, scfg)]
    table = tier_table(models, heldout, BATCHES[:1], n_rows=4, context_k=1, repeats=2, rank_candidates=8,
                       rank_repeats=1, fig_path=tmp_path / "tiers.png")  # fmt: skip
    assert [r["model"] for r in table.rows] == ["teacher", "distilled"]
    for r in table.rows:
        for key in ("eval_loss", "median_rel_err", "predict_p50_ms", "rank_p50_ms"):
            assert math.isfinite(r[key]) and r[key] >= 0, (r["model"], key, r[key])
        assert r["rows"] == 4
    assert table.rows[0]["params"] > table.rows[1]["params"]
    assert table.markdown.startswith("| model | params |") and "| distilled |" in table.markdown
    assert table.figure.stat().st_size > 10_000


def test_asset_is_wired_as_described():
    import dagster as dg

    from pingllm_assets.experiments.distill import DistilledTiersConfig, distilled_tiers

    key = dg.AssetKey("distilled_tiers")
    assert distilled_tiers.group_names_by_key[key] == "beyond"
    deps = {d.asset_key for d in distilled_tiers.specs_by_key[key].deps}
    assert deps == {dg.AssetKey("trained_model"), dg.AssetKey("probe_records")}
    cfg = DistilledTiersConfig()
    assert dataclasses.asdict(model_config("tiny", **TEST_STUDENT))["d_model"] == cfg.d_model
    # The asset's config converts to the core one: same-named fields copied, the rest translated.
    assert cfg.to_core() == TiersConfig(
        student=TEST_STUDENT, steps=60, n_rows=30, repeats=10, rank_candidates=100
    )
    small = DistilledTiersConfig(student_tier="small", seq_len=128, lr=1e-3).to_core()
    assert (small.student["d_model"], small.seq_len, small.lr) == (model_config("small").d_model, 128, 1e-3)

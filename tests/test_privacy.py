"""Membership-inference audit: metrics on constructed losses, and an end-to-end run on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from pingllm_core.data import records, tokens
from pingllm_core.evaluation import figures, metrics
from pingllm_core.experiments import privacy
from pingllm_core.model.transformer import Transformer, model_config
from pingllm_core.query.context import FIELD_ORDER
from tests.helpers.splits import make_record_splits

# ------------------------------------------------------------------------------------- audit metrics


def test_separable_losses_give_auc_one() -> None:
    rng = np.random.default_rng(0)
    members = rng.uniform(0.5, 1.0, 300)
    nonmembers = rng.uniform(2.0, 3.0, 300)
    res = metrics.membership_audit(members, nonmembers)
    assert res["auc"] == pytest.approx(1.0)
    assert res["tpr_at_1pct_fpr"] == pytest.approx(1.0)
    assert res["tpr_at_10pct_fpr"] == pytest.approx(1.0)
    assert res["advantage"] == pytest.approx(1.0)
    assert members.max() <= res["advantage_threshold"] < nonmembers.min()
    assert res["yeom_tpr"] == pytest.approx(np.mean(members <= members.mean()))
    assert res["yeom_fpr"] == 0.0
    assert res["n_members"] == res["n_nonmembers"] == 300


def test_reversed_losses_give_auc_zero() -> None:
    res = metrics.membership_audit(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert res["auc"] == pytest.approx(0.0)
    assert res["advantage"] == pytest.approx(0.0)  # the "flag nobody" threshold


def test_identical_distributions_give_chance() -> None:
    rng = np.random.default_rng(1)
    members = rng.normal(2.0, 0.3, 4000)
    nonmembers = rng.normal(2.0, 0.3, 4000)
    res = metrics.membership_audit(members, nonmembers)
    assert abs(res["auc"] - 0.5) < 4 * res["auc_se"] + 1e-3
    assert abs(res["auc"] - 0.5) < 0.03
    assert res["tpr_at_1pct_fpr"] < 0.04
    assert abs(res["tpr_at_10pct_fpr"] - 0.10) < 0.04
    assert res["advantage"] < 0.05
    # Exactly equal losses carry no signal at all.
    same = metrics.membership_audit(np.ones(50), np.ones(50))
    assert same["auc"] == pytest.approx(0.5)
    assert same["advantage"] == pytest.approx(0.0)


def test_small_case_by_hand() -> None:
    # Attack: "member iff loss <= t". Sorted by loss (m = member, n = non-member):
    #   0.1 m, 0.2 m, 0.3 n, 0.4 m, 0.5 n, 0.6 n, 0.7 m, 0.8 n, 0.9 n, 1.0 n
    members = np.array([0.1, 0.2, 0.4, 0.7])
    nonmembers = np.array([0.3, 0.5, 0.6, 0.8, 0.9, 1.0])
    res = metrics.membership_audit(members, nonmembers)
    # Member/non-member pairs ranked right: 0.1 and 0.2 beat all 6, 0.4 beats 5, 0.7 beats 3 -> 20 of 24.
    assert res["auc"] == pytest.approx(20 / 24)
    # FPR <= 10% (< 1 of 6 non-members) allows no false positive: best is t = 0.2, TPR = 2/4.
    assert res["tpr_at_10pct_fpr"] == pytest.approx(0.5)
    assert res["tpr_at_1pct_fpr"] == pytest.approx(0.5)
    # Best TPR - FPR: t = 0.2 -> 0.5, t = 0.4 -> 0.75 - 1/6, t = 0.7 -> 1 - 3/6 = 0.5.
    assert res["advantage"] == pytest.approx(0.75 - 1 / 6)
    assert res["advantage_threshold"] == pytest.approx(0.4)
    # Yeom threshold = mean member loss = 0.35: TPR 2/4 (0.1, 0.2), FPR 1/6 (0.3).
    assert res["yeom_threshold"] == pytest.approx(0.35)
    assert res["yeom_tpr"] == pytest.approx(0.5)
    assert res["yeom_fpr"] == pytest.approx(1 / 6)
    assert res["fpr_resolution"] == pytest.approx(1 / 6)
    # With a 1-in-4 FPR budget one false positive is allowed: t = 0.4, TPR 3/4.
    fpr, tpr, thr = metrics.roc_points(members, nonmembers)
    assert metrics.tpr_at_fpr(fpr, tpr, 0.25) == pytest.approx(0.75)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_non_finite_losses_are_dropped_and_empty_input_rejected() -> None:
    res = metrics.membership_audit(np.array([0.1, np.nan, 0.2]), np.array([1.0, np.inf]))
    assert (res["n_members"], res["n_nonmembers"]) == (2, 1)
    assert res["auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        metrics.membership_audit(np.array([np.nan]), np.array([1.0]))


def test_roc_figure_from_losses(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    m, n = rng.normal(1.8, 0.2, 80), rng.normal(2.0, 0.2, 120)
    one = figures.fig_membership_roc(m, n, tmp_path / "one.png")
    many = figures.fig_membership_roc(
        {"probe": m, "dst": m + 0.1}, {"probe": n, "dst": n}, tmp_path / "m.png"
    )
    for p in (one, many):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(TypeError):
        figures.fig_membership_roc({"a": m}, n, tmp_path / "bad.png")


# -------------------------------------------------------------------------------------------- end to end

MEMBERS = [(11, 2, 400), (12, 1, 3), (13, 1, 60), (None, 1, 9), (14, 1, 25)]
NONMEMBERS = [(21, 1, 200), (22, 2, 30), (23, 1, 1)]


@pytest.fixture(scope="module")
def record_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("privacy")
    # A small row bound splits probe 11 over several rows, so per-probe grouping is exercised.
    cfg = records.RecordsConfig(max_row_bytes=4096, shards=2)
    train, heldout = make_record_splits(root, [("train", MEMBERS, 0), ("heldout_probes", NONMEMBERS, 1)], cfg)
    return train, heldout


@pytest.fixture(scope="module")
def tiny_model() -> Transformer:
    return Transformer(model_config("tiny", max_len=256), rngs=nnx.Rngs(0))


def test_probe_contexts_are_whole_timestamped_measurements(record_dirs) -> None:
    src = records.ProbeRecordSource(record_dirs[0])
    rows = [src[i] for i in range(len(src)) if src[i].prb_id == 11]
    assert len(rows) > 1  # probe 11 was split
    ctxs = privacy.probe_contexts(rows, 3, 200, np.random.default_rng(0))
    assert len(ctxs) == 3
    for t in ctxs:
        assert 0 < len(t) <= 200
        m, has_time, order = tokens.decode_tokens(t)
        assert has_time.all() and np.all(np.diff(m.time) >= 0)
        assert (order == np.array(FIELD_ORDER)).all()
        assert len(t) + privacy._MAX_MEAS_TOKENS > 200  # filled as far as whole measurements allow


def test_end_to_end_audit_on_tiny_model(record_dirs, tiny_model, tmp_path: Path) -> None:
    train_dir, heldout_dir = record_dirs
    table = privacy.probe_loss_table(tiny_model, train_dir, max_probes=10, contexts_per_probe=3, seq_len=128)
    assert len(table.prb_id) == len(MEMBERS)  # probe 11's rows are one unit; the id-less row is its own
    assert sorted(table.prb_id.tolist()) == [-1, 11, 12, 13, 14]
    assert np.all(np.isfinite(table.loss)) and np.all(table.loss > 0)
    # An untrained model is near uniform over 267 tokens: loss about ln 267.
    assert np.all(np.abs(table.loss - np.log(tokens.VOCAB_SIZE)) < 1.0)
    assert table.field_loss.shape == (5, 4) and np.all(np.isfinite(table.field("dst")))
    assert table.contexts[table.prb_id.tolist().index(11)] == 3
    assert table.contexts[table.prb_id.tolist().index(12)] == 1  # fits one context
    assert len(table.context_loss) == table.contexts.sum() == len(table.context_probe)
    assert np.all(table.tokens > 0)

    # Same seed, same numbers, whichever other probes are drawn (per-probe generators).
    again = privacy.probe_losses(tiny_model, records.ProbeRecordSource(train_dir), 10, 3, 128, 0)
    np.testing.assert_allclose(again, table.loss, rtol=1e-6)
    two = privacy.probe_loss_table(tiny_model, train_dir, max_probes=2, contexts_per_probe=3, seq_len=128)
    for pid, loss in zip(two.prb_id, two.loss, strict=True):
        assert loss == pytest.approx(table.loss[table.prb_id.tolist().index(pid)], rel=1e-6)

    non = privacy.probe_losses(tiny_model, heldout_dir, max_probes=10, contexts_per_probe=3, seq_len=128)
    assert non.shape == (len(NONMEMBERS),) and np.all(np.isfinite(non))
    res = metrics.membership_audit(table.loss, non)
    assert 0.0 <= res["auc"] <= 1.0 and 0.0 <= res["advantage"] <= 1.0
    path = figures.fig_membership_roc(table.loss, non, tmp_path / "fig" / "membership_roc.png")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000


def test_bad_arguments(record_dirs, tiny_model) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        privacy.probe_losses(tiny_model, record_dirs[0], seq_len=512)  # above the model's max_len
    with pytest.raises(ValueError, match="max_probes"):
        privacy.probe_losses(tiny_model, record_dirs[0], max_probes=0)

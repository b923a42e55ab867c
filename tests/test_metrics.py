"""Behaviour of the evaluation metrics on hand-computed and simulated examples."""

import math

import numpy as np
import pandas as pd
import pytest

from pingllm_core.evaluation import metrics


def test_point_metrics_match_hand_computation_and_skip_failed_rows():
    pred = np.array([10.0, 20.0, 30.0, 40.0, 99.0])
    true = np.array([10.0, 25.0, 20.0, 50.0, -1.0])  # last row failed: ignored
    m = metrics.point_metrics(pred, true)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx((0 + 5 + 10 + 10) / 4)
    assert m["median_ae"] == pytest.approx(7.5)
    # relative errors 0, 0.2, 0.5, 0.2 -> median 0.2
    assert m["rel_p50"] == pytest.approx(0.2)
    assert m["rel_p95"] <= 0.5 and m["rel_p95"] > m["rel_p50"]


def test_point_metrics_with_no_successful_rows_are_nan():
    m = metrics.point_metrics(np.array([1.0]), np.array([-1.0]))
    assert m["n"] == 0 and math.isnan(m["mae"])


def test_nll_of_known_probability_vector():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    assert metrics.nll(probs, np.array([0, 1])) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)


def test_nll_floors_zero_probability_at_eps():
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(metrics.NLL_EPS))


def test_crps_of_point_mass_is_absolute_error():
    values = np.array([1.0, 5.0, 10.0, 20.0])
    probs = np.tile([0.0, 0.0, 1.0, 0.0], (4, 1))
    true = np.array([10.0, 3.0, 14.5, 40.0])
    np.testing.assert_allclose(metrics.crps_discrete(values, probs, true), np.abs(true - 10.0))


def test_crps_of_two_point_distribution_by_hand():
    # X = 0 or 10 with prob 1/2 each, y = 4: F = 0.5 on [0, 10).
    # integral: [0,4) (0.5-0)^2 * 4 = 1, [4,10) (0.5-1)^2 * 6 = 1.5 -> 2.5
    # check: E|X-y| - E|X-X'|/2 = (4+6)/2 - (0.5*10)/2 = 5 - 2.5 = 2.5
    out = metrics.crps_discrete(np.array([0.0, 10.0]), np.array([[0.5, 0.5]]), np.array([4.0]))
    assert out[0] == pytest.approx(2.5)


def test_crps_discrete_agrees_with_sample_crps_of_the_same_empirical_distribution():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(3.0, 0.5, size=(5, 40))
    true = rng.lognormal(3.0, 0.5, size=5)
    for row in range(5):
        values, counts = np.unique(samples[row], return_counts=True)
        d = metrics.crps_discrete(values, (counts / counts.sum())[None, :], true[row : row + 1])[0]
        s = metrics.crps_samples(samples[row : row + 1], true[row : row + 1])[0]
        assert d == pytest.approx(s, rel=1e-9)


def test_crps_samples_of_identical_samples_is_absolute_error():
    out = metrics.crps_samples(np.full((2, 7), 3.0), np.array([3.0, 8.0]))
    np.testing.assert_allclose(out, [0.0, 5.0], atol=1e-12)


def _discretised_lognormal(n_rows: int, k: int = 800) -> tuple[np.ndarray, np.ndarray]:
    values = np.geomspace(1.0, 1000.0, k)
    dens = np.exp(-((np.log(values) - np.log(50.0)) ** 2) / (2 * 0.6**2))
    probs = dens / dens.sum()
    return values, np.tile(probs, (n_rows, 1))


def test_interval_coverage_of_calibrated_distribution_is_near_level():
    values, probs = _discretised_lognormal(4000)
    rng = np.random.default_rng(1)
    true = rng.choice(values, size=4000, p=probs[0])
    cov = metrics.interval_coverage(values, probs, true, level=0.8)
    assert 0.77 < cov < 0.83


def test_interval_coverage_of_too_narrow_distribution_is_low():
    values, probs = _discretised_lognormal(2000)
    true = np.random.default_rng(2).lognormal(np.log(50.0), 1.5, 2000)  # truth much wider
    assert metrics.interval_coverage(values, probs, true, level=0.8) < 0.6


def test_pit_is_uniform_for_calibrated_discrete_distribution():
    # coarse support: randomisation is what makes discrete PIT uniform
    values = np.array([10.0, 20.0, 30.0])
    p = np.array([0.2, 0.5, 0.3])
    true = np.random.default_rng(3).choice(values, size=6000, p=p)
    pit = metrics.pit_values(values, np.tile(p, (6000, 1)), true)
    hist = np.histogram(pit, bins=5, range=(0, 1))[0] / 6000
    np.testing.assert_allclose(hist, 0.2, atol=0.03)


def test_kl_of_identical_samples_is_zero_and_of_disjoint_samples_is_large():
    rng = np.random.default_rng(4)
    a = rng.lognormal(3.0, 0.3, 2000)
    assert metrics.kl_binned(a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    assert metrics.kl_binned(a, a * 20.0) > 1.0


def test_kl_ignores_failed_samples_and_is_nan_without_data():
    a = np.array([10.0, 11.0, 12.0])
    assert metrics.kl_binned(np.concatenate([a, [-1.0, -1.0]]), a) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(metrics.kl_binned(np.array([-1.0]), a))


def test_per_pair_kl_gives_one_row_per_pair_and_separates_good_from_bad_pairs():
    rng = np.random.default_rng(5)
    base = rng.lognormal(2.0, 0.2, 500)
    groups = {("a", "b"): (base, rng.lognormal(2.0, 0.2, 500)), ("c", "d"): (base, base * 10)}
    out = metrics.per_pair_kl(groups)
    assert list(out["pair"]) == [("a", "b"), ("c", "d")]
    assert out["kl"].iloc[0] < 0.3 < 1.0 < out["kl"].iloc[1]
    assert (out["n_true"] == 500).all()


def test_failure_metrics_on_small_case():
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([False, False, True, True])
    m = metrics.failure_metrics(p, y)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["base_rate"] == pytest.approx(0.5)
    assert m["pr_auc"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision at each positive's rank


def test_failure_metrics_single_class_returns_nan_with_note():
    m = metrics.failure_metrics(np.array([0.1, 0.2]), np.array([False, False]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert "single class" in m["note"]
    assert m["brier"] == pytest.approx((0.01 + 0.04) / 2)


def test_slice_table_gives_one_tidy_row_per_slice():
    df = pd.DataFrame(
        {
            "ip_version": [4, 4, 6, 6, 6],
            "split": ["future", "heldout", "future", "future", "heldout"],
            "pred": [10.0, 10.0, 30.0, 20.0, 5.0],
            "rtt": [10.0, 20.0, 30.0, 40.0, 10.0],
        }
    )
    out = metrics.slice_table(
        df,
        ["ip_version", "split"],
        lambda d: metrics.point_metrics(d["pred"].to_numpy(), d["rtt"].to_numpy()),
    )
    assert len(out) == 4
    row = out[(out.ip_version == 6) & (out.split == "future")].iloc[0]
    assert row["n"] == 2 and row["mae"] == pytest.approx(10.0)

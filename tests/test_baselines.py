"""Baselines recover known structure on constructed data and always fall back to finite values."""

import numpy as np
import pandas as pd
import pytest

from pingllm_core.evaluation import baselines as bl
from pingllm_core.evaluation.metrics import failure_metrics

T0 = 1_700_000_000  # unix seconds


def _frame(src, dst, rtt, time=None) -> pd.DataFrame:
    n = len(rtt)
    time = np.arange(n, dtype=np.int64) + T0 if time is None else np.asarray(time, np.int64)
    return pd.DataFrame(
        {
            "event_time": time,
            "src_addr": np.asarray(src, dtype=object),
            "dst_addr": np.asarray(dst, dtype=object),
            "ip_version": np.int8(4),
            "rtt": np.asarray(rtt, np.float64),
            "prb_id": np.zeros(n, np.int32),
        }
    )


def _median_rel(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.median(np.abs(pred - true) / true))


def test_address_prefix_groups_v4_by_24_and_v6_by_48():
    out = bl.address_prefix(
        np.array(["1.2.3.4", "1.2.3.200", "1.2.4.1", "2001:db8:1:2::1", "2001:db8:1:ffff::9"])
    )
    assert list(out) == ["1.2.3.0/24", "1.2.3.0/24", "1.2.4.0/24", "2001:db8:1::/48", "2001:db8:1::/48"]


def test_to_unix_seconds_accepts_datetimes_and_integers():
    ints = np.array([T0, T0 + 60], np.int64)
    dts = pd.Series(pd.to_datetime(ints, unit="s", utc=True))
    np.testing.assert_array_equal(bl.to_unix_seconds(dts), ints)
    np.testing.assert_array_equal(bl.to_unix_seconds(ints), ints)
    np.testing.assert_array_equal(bl.to_unix_seconds(dts.dt.tz_localize(None).to_numpy()), ints)


@pytest.fixture(scope="module")
def plane():
    """Nodes in a 2-D plane, RTT = Euclidean distance + 2 ms (+2% noise); 40% of pairs observed."""
    rng = np.random.default_rng(1)
    n = 80
    pos = rng.uniform(0, 100, (n, 2))
    names = np.array([f"{k // 50 + 1}.{k % 50}.0.{k + 1}" for k in range(n)], dtype=object)
    i, j = np.triu_indices(n, 1)
    dist = np.linalg.norm(pos[i] - pos[j], axis=1) + 2.0
    seen = rng.random(len(i)) < 0.4
    reps = 3
    noisy = np.repeat(dist[seen], reps) * (1 + 0.02 * rng.normal(size=int(seen.sum()) * reps))
    train = _frame(names[np.repeat(i[seen], reps)], names[np.repeat(j[seen], reps)], noisy)
    return train, names[i[~seen]], names[j[~seen]], dist[~seen]


def test_vivaldi_recovers_plane_distances_and_beats_global_median(plane):
    train, src, dst, true = plane
    viv = _median_rel(bl.Vivaldi(seed=0).fit(train).predict(src, dst, None), true)
    glob = _median_rel(bl.GlobalMedian().fit(train).predict(src, dst, None), true)
    assert viv < 0.15
    assert viv < glob / 2


def test_vivaldi_is_symmetric_in_its_nodes(plane):
    train, src, dst, _ = plane
    model = bl.Vivaldi(seed=0).fit(train)
    np.testing.assert_allclose(model.predict(src, dst, None), model.predict(dst, src, None))


def test_matrix_factorization_recovers_held_out_entries_of_rank3_matrix():
    rng = np.random.default_rng(2)
    ns, nd = 60, 40
    mat = 10.0 * rng.uniform(0.2, 2, (ns, 3)) @ rng.uniform(0.2, 2, (nd, 3)).T
    sn = np.array([f"1.1.{k}.1" for k in range(ns)], dtype=object)
    dn = np.array([f"2.2.{k}.1" for k in range(nd)], dtype=object)
    si, di = (a.ravel() for a in np.meshgrid(np.arange(ns), np.arange(nd), indexing="ij"))
    seen = rng.random(len(si)) < 0.5
    train = _frame(sn[si[seen]], dn[di[seen]], mat[si[seen], di[seen]])
    true = mat[si[~seen], di[~seen]]
    mf = bl.MatrixFactorization(symmetric=False, seed=0).fit(train)
    err = _median_rel(mf.predict(sn[si[~seen]], dn[di[~seen]], None), true)
    glob = _median_rel(bl.GlobalMedian().fit(train).predict(sn[si[~seen]], dn[di[~seen]], None), true)
    assert err < 0.1
    assert err < glob / 2
    assert (mf.u_ >= 0).all() and (mf.v_ >= 0).all()


def test_prefix_pair_median_beats_global_median_on_prefix_structured_data():
    rng = np.random.default_rng(3)
    # 6 source /24s x 4 destination /24s, each prefix pair with its own RTT level
    level = rng.uniform(5, 300, (6, 4))
    n = 3000
    sp, dp = rng.integers(0, 6, n), rng.integers(0, 4, n)
    src = np.array([f"10.0.{a}.{h}" for a, h in zip(sp, rng.integers(1, 255, n), strict=True)], dtype=object)
    dst = np.array(
        [f"2001:db8:{b}:{h:x}::1" for b, h in zip(dp, rng.integers(1, 999, n), strict=True)], dtype=object
    )
    rtt = level[sp, dp] * (1 + 0.05 * rng.normal(size=n))
    train, test = _frame(src[:2000], dst[:2000], rtt[:2000]), slice(2000, None)
    ppm = _median_rel(bl.PrefixPairMedian().fit(train).predict(src[test], dst[test], None), rtt[test])
    glob = _median_rel(bl.GlobalMedian().fit(train).predict(src[test], dst[test], None), rtt[test])
    assert ppm < 0.1 < glob


def test_prefix_pair_median_falls_back_to_destination_prefix_then_global():
    train = _frame(["1.1.1.1", "1.1.1.2", "2.2.2.2"], ["9.9.9.9", "9.9.9.9", "8.8.8.8"], [10.0, 20.0, 100.0])
    model = bl.PrefixPairMedian().fit(train)
    out = model.predict(
        np.array(["1.1.1.7", "5.5.5.5", "5.5.5.5"]), np.array(["9.9.9.1", "9.9.9.2", "7.7.7.7"]), None
    )
    np.testing.assert_allclose(out, [15.0, 15.0, 20.0])


def _step_change() -> pd.DataFrame:
    """One pair at 20 ms for 100 packets, then 80 ms for 20 packets (one a minute); a few failures."""
    rtt = np.r_[np.full(100, 20.0), np.full(20, 80.0)]
    rtt[[5, 50, 110]] = -1.0
    return _frame(["1.1.1.1"] * 120, ["9.9.9.9"] * 120, rtt, T0 + 60 * np.arange(120))


@pytest.mark.parametrize("model", [bl.SourceLastSeen(), bl.SourceEMA(alpha=0.3)])
def test_source_models_follow_a_step_change_in_time(model):
    model.fit(_step_change())
    src, dst = np.array(["1.1.1.1"] * 3), np.array(["9.9.9.9"] * 3)
    times = T0 + 60 * np.array([50, 99, 500])  # mid-first-level, end of first level, after the step
    out = model.predict(src, dst, times)
    assert out[0] == pytest.approx(20.0) and out[1] == pytest.approx(20.0)
    assert out[2] == pytest.approx(80.0, rel=1e-3)


def test_source_models_use_source_then_global_fallback_and_time_clean_lookup():
    model = bl.SourceLastSeen().fit(_step_change())
    out = model.predict(
        np.array(["1.1.1.1", "4.4.4.4", "1.1.1.1"]),
        np.array(["7.7.7.7", "9.9.9.9", "9.9.9.9"]),
        np.array([T0 + 60 * 119, T0 + 60 * 119, T0 - 10]),  # last: before any train row
    )
    assert out[0] == pytest.approx(80.0)  # unseen pair -> source's last value
    assert out[1] == pytest.approx(20.0)  # unseen source -> global median
    assert out[2] == pytest.approx(20.0)  # nothing at or before the time -> global median
    stale = bl.SourceLastSeen(time_clean=False).fit(_step_change())
    assert stale.predict(np.array(["1.1.1.1"]), np.array(["9.9.9.9"]), np.array([T0]))[0] == pytest.approx(
        80.0
    )
    assert model.predict(np.array(["1.1.1.1"]), np.array(["9.9.9.9"]), None)[0] == pytest.approx(80.0)


def test_every_baseline_gives_finite_values_for_unseen_nodes(plane):
    train, _, _, _ = plane
    models = bl.fit_all_baselines(train.iloc[:500], seed=0)
    assert set(models) == {
        "global_median",
        "source_last_seen",
        "source_ema",
        "prefix_pair_median",
        "vivaldi",
        "matrix_factorization",
        "destination_failure_rate",
    }
    src = np.array(["203.0.113.5", "2001:db8::1", train.src_addr.iloc[0]], dtype=object)
    dst = np.array(["198.51.100.7", train.dst_addr.iloc[0], "2001:db8:5::2"], dtype=object)
    times = pd.to_datetime(np.full(3, T0), unit="s", utc=True)
    for model in models.values():
        rtt, p = model.predict(src, dst, times), model.predict_fail(src, dst, times)
        assert rtt.shape == (3,) and np.isfinite(rtt).all() and (rtt > 0).all(), model.name
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all(), model.name


def test_destination_failure_rate_ranks_failing_destinations_above_reliable_ones():
    rng = np.random.default_rng(4)
    rates = rng.uniform(0.0, 0.6, 30)  # per-destination failure probability
    dst_names = np.array([f"9.9.{k}.1" for k in range(30)], dtype=object)

    def draw(n):
        d = rng.integers(0, 30, n)
        failed = rng.random(n) < rates[d]
        return dst_names[d], np.where(failed, -1.0, 30.0), failed

    d_tr, r_tr, _ = draw(6000)
    d_te, _, f_te = draw(3000)
    model = bl.DestinationFailureRate().fit(_frame(np.full(6000, "1.1.1.1"), d_tr, r_tr))
    m = failure_metrics(model.predict_fail(np.full(3000, "1.1.1.1"), d_te, None), f_te)
    assert m["roc_auc"] > 0.7
    unseen = model.predict_fail(np.array(["1.1.1.1"]), np.array(["5.5.5.5"]), None)
    assert unseen[0] == pytest.approx(model.global_fail_rate_)

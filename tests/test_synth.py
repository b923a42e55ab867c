"""Behaviour of the synthetic internet: RIPE-format files, determinism, addresses, RTT physics, truth."""

from __future__ import annotations

import bz2
import datetime as dt
import ipaddress
from pathlib import Path

import numpy as np
import orjson
import pytest

from pingllm_core.ingest.synth import FIBRE_KM_PER_MS, SynthConfig, SyntheticInternet
from pingllm_core.ingest.synth_geo import RESIDENTIAL, ROLE_POPULAR, great_circle_km

SMALL = SynthConfig(
    seed=7,
    n_probes=40,
    n_anchors=5,
    n_popular=2,
    n_ases=10,
    targets_per_probe=4,
    start_day="2024-03-04",
    days=2,
)
DAY = dt.date(2024, 3, 4)
RIPE_KEYS = {"af", "prb_id", "msm_id", "from", "src_addr", "dst_addr", "dst_name", "timestamp", "sent", "rcvd",
             "min", "avg", "max", "type", "fw", "lts", "size", "step", "proto", "result"}  # fmt: skip


@pytest.fixture(scope="module")
def net() -> SyntheticInternet:
    return SyntheticInternet.build(SMALL)


@pytest.fixture(scope="module")
def hour_lines(net: SyntheticInternet, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    path = net.write_hour(tmp_path_factory.mktemp("raw"), DAY, 18)
    return [orjson.loads(line) for line in bz2.decompress(path.read_bytes()).splitlines()]


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in bz2.decompress(path.read_bytes()).splitlines()]


def _is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def test_late_series_send_nothing_before_they_begin_and_skip_popular_targets(net: SyntheticInternet) -> None:
    w = net.world
    late = np.flatnonzero(w.s_start > 0)
    assert len(late) and not (w.role[w.s_dst[late]] == ROLE_POPULAR).any()
    t0 = int(dt.datetime(2024, 3, 4, tzinfo=dt.UTC).timestamp())
    assert ((w.s_start[late] >= t0) & (w.s_start[late] < t0 + SMALL.days * 86400)).all()
    day = dt.date(2024, 3, 4)
    for hour in (0, 12):
        h0 = t0 + hour * 3600
        for line in net.hour_results(day, hour):
            r = orjson.loads(line)
            i = np.flatnonzero((w.prb_id[w.s_src] == r["prb_id"]) & (w.s_msm == r["msm_id"]))
            assert r["timestamp"] >= w.s_start[i].min() and h0 <= r["timestamp"] < h0 + 3600


def test_write_hour_uses_the_ripe_dump_path_and_no_temp_files_remain(
    net: SyntheticInternet, tmp_path: Path
) -> None:
    path = net.write_hour(tmp_path, DAY, 7)
    assert path == tmp_path / "2024-03-04" / "ping-2024-03-04T0700.bz2"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_hour_file_is_bz2_ndjson_of_ripe_ping_results(net: SyntheticInternet, hour_lines: list[dict]) -> None:
    start = int(dt.datetime(2024, 3, 4, 18, tzinfo=dt.UTC).timestamp())
    w, step = net.world, SMALL.interval_s
    # every series that has begun reports each 240 s (late series start inside the window)
    slots = start + (w.s_phase[:, None] - start) % step + step * np.arange(3600 // step)[None, :]
    assert len(hour_lines) == int((slots >= w.s_start[:, None]).sum())
    assert (w.s_start > start).any() and (w.s_start == 0).mean() > 0.5
    for r in hour_lines:
        assert RIPE_KEYS <= r.keys()
        assert r["type"] == "ping" and r["proto"] == "ICMP" and r["step"] == 240
        assert r["af"] in (4, 6)
        assert isinstance(r["prb_id"], int) and r["prb_id"] > 0 and isinstance(r["msm_id"], int)
        assert isinstance(r["timestamp"], int) and start <= r["timestamp"] < start + 3600
        ok = [p["rtt"] for p in r["result"] if "rtt" in p]
        assert r["rcvd"] == len(ok) <= r["sent"]
        if "error" in r["result"][0]:
            assert r["sent"] == 0 and len(r["result"]) == 1
        else:
            assert r["sent"] == 3 and len(r["result"]) == 3
            assert all(p == {"x": "*"} for p in r["result"] if "rtt" not in p)
        if ok:
            assert all(isinstance(x, float) and x > 0 for x in ok)
            assert r["min"] == min(ok) and r["max"] == max(ok) and abs(r["avg"] - np.mean(ok)) < 1e-3
        else:
            assert r["min"] == r["max"] == r["avg"] == -1
    ts = [r["timestamp"] for r in hour_lines]
    assert ts == sorted(ts)


def test_both_families_present_and_msm_id_is_per_target_and_family(hour_lines: list[dict]) -> None:
    assert {r["af"] for r in hour_lines} == {4, 6}
    by_msm: dict[int, set[tuple[str, int]]] = {}
    for r in hour_lines:
        by_msm.setdefault(r["msm_id"], set()).add((r["dst_addr"], r["af"]))
    assert all(len(v) == 1 for v in by_msm.values())


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, n_probes=12, n_anchors=2, n_popular=1, n_ases=5, targets_per_probe=3)
    day = dt.date.fromisoformat(cfg.start_day)
    a = SyntheticInternet.build(cfg).write_hour(tmp_path / "a", day, 5).read_bytes()
    b = SyntheticInternet.build(cfg).write_hour(tmp_path / "b", day, 5).read_bytes()
    c = SyntheticInternet.build(SynthConfig(**{**cfg.__dict__, "seed": 4})).write_hour(tmp_path / "c", day, 5)
    assert a == b
    assert a != c.read_bytes()


def test_from_is_always_global_and_nat_probes_report_private_src_addr(hour_lines: list[dict]) -> None:
    for r in hour_lines:
        assert _is_public(r["from"]) and _is_public(r["dst_addr"])
        assert ipaddress.ip_address(r["from"]).version == r["af"]
        if r["af"] == 6:
            assert r["src_addr"] in (r["from"], "")
    natted = [r for r in hour_lines if r["af"] == 4 and not ipaddress.ip_address(r["src_addr"]).is_global]
    assert natted, "expected some NAT'd IPv4 probes"
    cgnat = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (mobile), not "private" in ipaddress
    assert all(ipaddress.ip_address(r["src_addr"]).is_private or ipaddress.ip_address(r["src_addr"]) in cgnat
               for r in natted)  # fmt: skip
    direct = [r for r in hour_lines if r["af"] == 4 and r not in natted]
    assert direct and all(r["src_addr"] == r["from"] for r in direct)


def test_every_node_address_is_public_and_inside_its_as_prefix(net: SyntheticInternet) -> None:
    nodes = net.node_table()
    w = net.world
    doc = [
        ipaddress.ip_network(n)
        for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    ]
    for ip, node, is_v6 in zip(nodes["ip"], nodes["node"], nodes["is_v6"], strict=True):
        addr = ipaddress.ip_address(str(ip))
        assert _is_public(str(ip)) and not any(addr in d for d in doc)
        prefix = (w.as_prefix6 if is_v6 else w.as_prefix4)[w.as_idx[node]]
        assert addr in ipaddress.ip_network(str(prefix))
    assert len(set(nodes["ip"].tolist())) == len(nodes["ip"])
    v6_nodes = set(nodes["node"][nodes["is_v6"]].tolist())
    assert set(nodes["node"][nodes["is_anchor"]].tolist()) <= v6_nodes  # anchors are dual-stack
    assert 0 < len(v6_nodes) < len(w.ip4)


def _all_pairs(net: SyntheticInternet) -> tuple[list[str], list[str], np.ndarray]:
    ips = net.world.ip4.tolist()
    src = [a for a in ips for _ in ips]
    dst = [b for _ in ips for b in ips]
    keep = np.array([a != b for a, b in zip(src, dst, strict=True)])
    idx = np.flatnonzero(keep)
    return [src[i] for i in idx], [dst[i] for i in idx], idx


def test_true_median_respects_fibre_bound_and_grows_with_distance(net: SyntheticInternet) -> None:
    w = net.world
    src, dst, idx = _all_pairs(net)
    n = len(w.ip4)
    s, d = idx // n, idx % n
    dist = great_circle_km(w.lat[s], w.lon[s], w.lat[d], w.lon[d])
    times = np.random.default_rng(0).integers(1_709_500_000, 1_709_700_000, len(src))
    med = net.true_median_rtt(src, dst, times)
    assert np.all(np.isfinite(med))
    assert np.all(med >= dist / FIBRE_KM_PER_MS)
    assert np.all(med <= dist / FIBRE_KM_PER_MS * 3 * 1.7 + 300)  # inflation <= 3x, detour <= 1.7x
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(dist), rank(med))[0, 1] > 0.7  # Spearman correlation
    assert np.median(med[dist > 5000]) > 2 * np.median(med[dist < 1000])


def test_packets_in_files_never_beat_the_speed_of_light(
    net: SyntheticInternet, hour_lines: list[dict]
) -> None:
    table = net.node_table()
    pos = {str(ip): (la, lo) for ip, la, lo in zip(table["ip"], table["lat"], table["lon"], strict=True)}
    for r in hour_lines:
        (la1, lo1), (la2, lo2) = pos[r["from"]], pos[r["dst_addr"]]
        bound = great_circle_km(np.array(la1), np.array(lo1), np.array(la2), np.array(lo2)) / FIBRE_KM_PER_MS
        assert all(p["rtt"] >= bound for p in r["result"] if "rtt" in p)


def test_local_evening_is_slower_than_early_morning_for_residential_sources(net: SyntheticInternet) -> None:
    w = net.world
    res = np.flatnonzero((w.as_kind[w.as_idx] == RESIDENTIAL) & (w.role == 0))
    dst = np.flatnonzero(w.role == 1)  # anchors
    s, d = np.repeat(res, len(dst)), np.tile(dst, len(res))
    midnight = int(dt.datetime(2024, 3, 5, tzinfo=dt.UTC).timestamp())
    # The same local calendar day at 05:00 and 20:30, converted to UTC with each source's offset.
    morning = (midnight + (5.0 - w.tz_h[s]) * 3600).astype(np.int64)
    evening = (midnight + (20.5 - w.tz_h[s]) * 3600).astype(np.int64)
    src, dsts = w.ip4[s].tolist(), w.ip4[d].tolist()
    diff = net.true_median_rtt(src, dsts, evening) - net.true_median_rtt(src, dsts, morning)
    assert np.median(diff) > 2.0  # ms; route changes may mask it for a few pairs, not for most
    assert np.mean(diff > 0) > 0.75


def test_ipv6_paths_have_their_own_inflation(net: SyntheticInternet) -> None:
    w = net.world
    both = np.flatnonzero(w.ip6 != "")
    s, d = np.repeat(both, len(both)), np.tile(both, len(both))
    keep = s != d
    s, d = s[keep], d[keep]
    t = np.full(len(s), 1_709_600_000)
    v4 = net.true_median_rtt(w.ip4[s].tolist(), w.ip4[d].tolist(), t)
    v6 = net.true_median_rtt(w.ip6[s].tolist(), w.ip6[d].tolist(), t)
    assert np.all(np.isfinite(v4)) and np.all(np.isfinite(v6))
    assert np.mean(np.abs(v6 - v4) > 0.5) > 0.3


def test_outages_fail_every_packet_of_the_affected_results(tmp_path: Path) -> None:
    cfg = SynthConfig(**{**SMALL.__dict__, "outage_rate": 0.5, "loss_rate": 0.0})
    net = SyntheticInternet.build(cfg)
    lines = _read(net.write_hour(tmp_path, DAY, 3))
    ip_node = {str(ip): n for ip, n in zip(net.node_table()["ip"], net.node_table()["node"], strict=True)}
    src = np.array([ip_node[r["from"]] for r in lines])
    dst = np.array([ip_node[r["dst_addr"]] for r in lines])
    t = np.array([r["timestamp"] for r in lines])
    down = net._in_outage(src, t) | net._in_outage(dst, t)
    rcvd = np.array([r["rcvd"] for r in lines])
    assert down.sum() > 10 and (~down).sum() > 10
    assert np.all(rcvd[down] == 0)
    assert all(
        p == {"x": "*"} or "error" in p for r, dn in zip(lines, down, strict=True) if dn for p in r["result"]
    )
    assert np.mean(rcvd[~down] == 3) > 0.99  # no loss configured: the rest succeeds (bar send errors)
    probs = net.true_failure_prob([r["from"] for r in lines], [r["dst_addr"] for r in lines], t)
    assert np.all(probs[down] == 1.0) and np.all(probs[~down] == 0.0)


def test_save_load_round_trip_answers_identically(net: SyntheticInternet, tmp_path: Path) -> None:
    path = net.save(tmp_path / "synth" / "ground_truth.npz")
    back = SyntheticInternet.load(path)
    src, dst, _ = _all_pairs(net)
    t = np.random.default_rng(1).integers(1_709_500_000, 1_709_700_000, len(src))
    np.testing.assert_array_equal(net.true_median_rtt(src, dst, t), back.true_median_rtt(src, dst, t))
    np.testing.assert_array_equal(net.true_failure_prob(src, dst, t), back.true_failure_prob(src, dst, t))
    a, b = net.world.ip6[net.world.ip6 != ""][:2].tolist()
    np.testing.assert_array_equal(
        net.sample_live(a, b, 1_709_600_123, 50, 9), back.sample_live(a, b, 1_709_600_123, 50, 9)
    )
    for key, col in net.node_table().items():
        np.testing.assert_array_equal(col, back.node_table()[key])
    assert back.cfg == net.cfg and back.days() == net.days()
    assert (
        net.write_hour(tmp_path / "x", DAY, 0).read_bytes()
        == back.write_hour(tmp_path / "y", DAY, 0).read_bytes()
    )


def test_sample_live_is_deterministic_per_seed_and_matches_the_true_median(net: SyntheticInternet) -> None:
    w = net.world
    # Two probes that are not a configured series: live samples work for any pair.
    pairs = set(zip(w.s_src.tolist(), w.s_dst.tolist(), strict=True))
    s, d = next((i, j) for i in range(40) for j in range(40) if i != j and (i, j) not in pairs)
    a, b = w.ip4[s], w.ip4[d]
    t = 1_709_612_345
    while net.true_failure_prob([a], [b], t)[0] >= 0.5:  # step out of an outage, if any
        t += 3600
    x = net.sample_live(a, b, t, 4000, seed=1)
    np.testing.assert_array_equal(x, net.sample_live(a, b, t, 4000, seed=1))
    assert not np.array_equal(x, net.sample_live(a, b, t, 4000, seed=2))
    ok = x[x >= 0]
    assert np.all((x == -1.0) | (x > 0)) and len(ok) > 3000
    true = net.true_median_rtt([a], [b], t)[0]
    assert abs(np.median(ok) - true) < 0.05 * true
    bound = great_circle_km(w.lat[s], w.lon[s], w.lat[d], w.lon[d]) / FIBRE_KM_PER_MS
    assert ok.min() >= bound


def test_unknown_or_mixed_family_pairs_give_nan_and_live_raises(net: SyntheticInternet) -> None:
    w = net.world
    v6 = w.ip6[w.ip6 != ""][0]
    out = net.true_median_rtt(["192.0.2.1", w.ip4[0], w.ip4[0]], [w.ip4[1], v6, w.ip4[1]], 1_709_600_000)
    assert np.isnan(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])
    with pytest.raises(KeyError):
        net.sample_live("192.0.2.1", w.ip4[1], 1_709_600_000, 3, 0)
    with pytest.raises(ValueError):
        net.sample_live(w.ip4[0], v6, 1_709_600_000, 3, 0)


def test_route_changes_are_rare_longer_detours_that_hold_for_hours(net: SyntheticInternet) -> None:
    t = 1_709_510_400 + np.arange(0, 7 * 86400, 600)  # a week in 10-minute steps
    n = 40
    pair_src, pair_dst = np.arange(n), (np.arange(n) + 1) % n
    src, dst = np.repeat(pair_src, len(t)), np.repeat(pair_dst, len(t))
    infl = net._inflation(src, dst, np.full(len(src), 4), np.tile(t, n)).reshape(n, len(t))
    assert np.all(infl >= 1.3)
    primary = np.array(
        [
            np.unique(row, return_counts=True)[0][np.argmax(np.unique(row, return_counts=True)[1])]
            for row in infl
        ]
    )
    detour = infl != primary[:, None]
    assert np.all(infl[detour] >= 1.1 * np.broadcast_to(primary[:, None], infl.shape)[detour] - 1e-9)
    assert 0.05 < detour.mean() < 0.3  # about route_change_rate of the time
    switches = np.count_nonzero(np.diff(infl, axis=1), axis=1)
    assert switches.sum() > 0 and switches.max() <= 2 * 7 * 24 / 2  # epochs last >= 2 h


def test_config_validation_and_day_window() -> None:
    with pytest.raises(ValueError):
        SynthConfig(start_day="2024-13-01")
    with pytest.raises(ValueError, match="n_ases"):
        SynthConfig(n_ases=3)
    with pytest.raises(ValueError, match="loss_rate"):
        SynthConfig(loss_rate=0.7)
    net = SyntheticInternet.build(SynthConfig(**{**SMALL.__dict__, "days": 3}))
    assert net.days() == [DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)]


def test_interval_not_dividing_the_hour_keeps_each_series_on_its_own_grid(tmp_path: Path) -> None:
    cfg = SynthConfig(
        seed=2, n_probes=10, n_anchors=2, n_popular=1, n_ases=4, targets_per_probe=2, interval_s=700,
        late_series_share=0.0,  # every series runs from the start
    )  # fmt: skip
    net = SyntheticInternet.build(cfg)
    day = dt.date.fromisoformat(cfg.start_day)
    lines = _read(net.write_hour(tmp_path, day, 0)) + _read(net.write_hour(tmp_path, day, 1))
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    by_series: dict[tuple, list[int]] = {}
    for r in lines:
        by_series.setdefault((r["prb_id"], r["msm_id"]), []).append(r["timestamp"])
    assert len(by_series) == len(net.world.s_src)
    for ts in by_series.values():
        ts = sorted(ts)
        assert all(
            b - a == 700 for a, b in zip(ts, ts[1:], strict=False)
        )  # no gap or double at the hour edge
        assert start <= ts[0] < start + 700 and ts[-1] >= start + 7200 - 700

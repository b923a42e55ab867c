"""Probe-centric ArrayRecord rows: encode/decode, grouping, splitting, index, atomic replace."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pingllm_core.data import records
from tests.helpers.splits import PROBES, make_split


def _ip(b: np.ndarray, v6: bool) -> str:
    return str(ipaddress.IPv6Address(bytes(b)) if v6 else ipaddress.IPv4Address(bytes(b[:4])))


def _row_tuples(row: records.ProbeRow) -> list[tuple]:
    m = row.measurements()
    return [
        (int(m.time[i]), _ip(m.src[i], m.src_v6[i]), _ip(m.dst[i], m.dst_v6[i]), float(np.float32(m.rtt[i])))
        for i in range(row.n)
    ]


def _group_key(prb, src: str):
    return ("prb", int(prb)) if not pd.isna(prb) else ("src", src)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    path = tmp_path_factory.mktemp("split") / "train.parquet"
    return path, make_split(path)


def test_encode_decode_roundtrip_exact_with_both_destination_layouts():
    rng = np.random.default_rng(1)
    n = 500
    src = rng.integers(0, 256, (n, 16)).astype(np.uint8)[rng.integers(0, 3, n) * 0]  # one source
    src_v6 = np.zeros(n, bool)
    for n_dst in (3, n):  # few destinations -> dictionary; all distinct -> raw is smaller
        table = rng.integers(0, 256, (n_dst, 16)).astype(np.uint8)
        dst = table[rng.integers(0, n_dst, n)] if n_dst < n else table  # all distinct when n_dst == n
        dst_v6 = rng.random(n) < 0.5
        t = np.sort(rng.integers(0, 2**40, n))
        rtt = rng.random(n).astype(np.float32) * 100
        b = records.encode_row(42, t, src, src_v6, dst, dst_v6, rtt)
        row = records.decode_row(b)
        assert (row.dst_index is not None) == (n_dst == 3)
        m = row.measurements()
        assert row.prb_id == 42 and row.first_ts == t[0] and row.last_ts == t[-1]
        np.testing.assert_array_equal(m.time, t)
        np.testing.assert_array_equal(m.src, src)
        np.testing.assert_array_equal(m.dst, dst)
        np.testing.assert_array_equal(m.dst_v6, dst_v6)
        np.testing.assert_array_equal(m.rtt, rtt.astype(np.float64))
        if n_dst == 3:  # the dictionary layout is the smaller one here
            assert len(b) < records.HEADER_BYTES + n * (8 + 4 + 1 + 17)


def test_decode_rejects_garbage():
    with pytest.raises(ValueError):
        records.decode_row(b"XXXX" + bytes(60))


def test_rows_hold_exactly_the_split_grouped_by_probe(split, tmp_path):
    path, df = split
    out = tmp_path / "rec"
    summary = records.write_probe_records(path, out, records.RecordsConfig(shards=3))
    src = records.ProbeRecordSource(out)
    assert summary.rows == len(src) == len(PROBES)  # big limit: one row per probe
    assert summary.measurements == len(df) and summary.probes == len(PROBES) and summary.shards == 3
    got = {}
    for i in range(len(src)):
        row = src[i]
        assert np.all(np.diff(row.time) >= 0)  # time order
        tup = _row_tuples(row)
        got[_group_key(row.prb_id if row.prb_id >= 0 else np.nan, tup[0][1])] = sorted(tup)
    want: dict = {}
    ts = df.event_time.dt.as_unit("s").astype("int64").tolist()
    rtt32 = df.rtt.astype(np.float32).astype(float).tolist()
    for i, (prb, s, d) in enumerate(zip(df.prb_id, df.src_addr, df.dst_addr, strict=True)):
        want.setdefault(_group_key(prb, s), []).append((ts[i], s, d, rtt32[i]))
    want = {k: sorted(v) for k, v in want.items()}
    assert got == want
    # The dual-stack probe keeps both of its source addresses in one row.
    dual = [src[i] for i in range(len(src)) if src[i].prb_id == 1][0]
    assert sorted(dual.src_table_v6.tolist()) == [False, True]


def test_large_probes_split_under_max_row_bytes_and_stream_in_batches(split, tmp_path):
    path, df = split
    cfg = records.RecordsConfig(max_row_bytes=4096, shards=4, batch_rows=97)  # tiny batches: probes span them
    summary = records.write_probe_records(path, tmp_path / "a", cfg)
    index = records.read_index(tmp_path / "a").to_pandas()
    assert index.bytes.max() <= 4096
    assert (index.prb_id == 1).sum() > 5  # the 2000-measurement probe is split
    assert index.n.sum() == len(df) == summary.measurements and summary.rows == len(index)
    for _, g in index[index.prb_id.notna()].groupby("prb_id"):
        g = g.sort_values(["index_in_shard", "shard"])  # write order: rows go round-robin over shards
        assert np.all(g.first_ts.to_numpy()[1:] >= g.last_ts.to_numpy()[:-1])  # pieces in time order
    # Same rows whatever the streaming batch size.
    records.write_probe_records(path, tmp_path / "b", records.RecordsConfig(max_row_bytes=4096, shards=4))
    a, b = records.ProbeRecordSource(tmp_path / "a"), records.ProbeRecordSource(tmp_path / "b")
    assert len(a) == len(b)
    assert all(a._source[i] == b._source[i] for i in range(len(a)))


def test_index_metadata_matches_rows(split, tmp_path):
    path, _ = split
    out = tmp_path / "rec"
    records.write_probe_records(path, out, records.RecordsConfig(max_row_bytes=2048, shards=2))
    index = records.read_index(out).to_pandas()
    src = records.ProbeRecordSource(out)
    assert list(index.row) == list(range(len(src)))
    for r in index.itertuples():
        raw = src._source[r.row]
        row = records.decode_row(raw)
        assert (r.n, r.first_ts, r.last_ts, r.bytes) == (row.n, row.time[0], row.time[-1], len(raw))
        assert r.n_v6 == int(row.measurements().dst_v6.sum()) and r.n_v4 + r.n_v6 == r.n
        assert (-1 if pd.isna(r.prb_id) else r.prb_id) == row.prb_id
        assert Path(out, f"probes-{r.shard:05d}-of-00002.array_record").exists()


def test_existing_output_is_replaced(split, tmp_path):
    path, _ = split
    out = tmp_path / "rec"
    records.write_probe_records(path, out, records.RecordsConfig(shards=4))
    records.write_probe_records(path, out, records.RecordsConfig(shards=2))
    assert len(records.shard_paths(out)) == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_config_rejects_a_row_limit_below_one_measurement():
    with pytest.raises(ValueError):
        records.RecordsConfig(max_row_bytes=64)

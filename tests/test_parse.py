"""Parser behaviour: real dumps agree with their independent manifests, legacy and hostile input."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingllm_core.parse import MANIFEST_KEYS, MEASUREMENT_SCHEMA, ParseConfig, parse_file, parse_files

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ripe-public"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _dump(tmp_path: Path, lines: list, name: str = "ping-2024-01-01T0000.bz2") -> Path:
    """Write lines (dicts become compact JSON, strings go as they are) into a bz2 dump file."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path = tmp_path / name
    path.write_bytes(bz2.compress(text.encode()))
    return path


def _read_parts(parts: list[str]) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in parts)


def _ping(**over) -> dict:
    base = {
        "af": 4, "prb_id": 7, "timestamp": 1_700_000_000, "from": "8.8.4.4", "src_addr": "192.168.1.2",
        "dst_addr": "1.1.1.1", "type": "ping", "rcvd": 3, "sent": 3, "avg": 10.0,
        "result": [{"rtt": 9.5}, {"rtt": 10.0}, {"rtt": 10.5}],
    }  # fmt: skip
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("folder", ["weineran", "starlink", "v6-first"])
def test_real_dumps_match_independent_manifest(folder: str, tmp_path: Path) -> None:
    manifest = json.loads((REAL / folder / "manifest.json").read_text())
    paths = sorted((REAL / folder).glob("*/*.bz2"))
    summary = parse_files(paths, tmp_path / "part-0.parquet", ParseConfig(workers=2))
    for key in MANIFEST_KEYS:
        assert summary.stats[key] == manifest.get(key, 0), key
    assert summary.parts == [str(tmp_path / f"part-{k}.parquet") for k in range(len(paths))]
    table = pq.read_table(summary.parts[0]) if len(paths) == 1 else _read_parts(summary.parts)
    # Parquet has no seconds unit, so event_time comes back as ms; the values cast back exactly.
    assert table.schema.names == MEASUREMENT_SCHEMA.names
    assert table.cast(MEASUREMENT_SCHEMA, safe=True).schema.equals(MEASUREMENT_SCHEMA)
    assert table.num_rows == manifest["rows"]
    assert not summary.truncated_files and not summary.errors


def test_single_file_stats_agree_with_its_table() -> None:
    parsed = parse_file(REAL / "weineran" / "2015-01-31" / "ping-2015-01-31T0000.bz2")
    t = parsed.table
    assert parsed.stats["rows"] == t.num_rows == 297
    assert parsed.stats["rows_failed"] == sum(1 for r in t.column("rtt").to_pylist() if r == -1.0) == 4
    assert set(t.column("ip_version").to_pylist()) == {4}
    assert not parsed.truncated and parsed.error is None


def test_legacy_firmware_cases(tmp_path: Path) -> None:
    path = tmp_path / "ping-2012-01-01T0000.bz2"
    path.write_bytes(bz2.compress((FIXTURES / "legacy-firmware-pings.ndjson").read_bytes()))
    parsed = parse_file(path)
    rows: dict[int, list] = {}
    for r in parsed.table.to_pylist():
        rows.setdefault(int(r["event_time"].timestamp()), []).append(r)
    rtts = {ts: [r["rtt"] for r in rs] for ts, rs in rows.items()}
    # fw 0: strings for numbers, no af, no from, no result list -> one row at avg from the public src_addr
    assert rtts[1328019792] == [58.042] and rows[1328019792][0]["src_addr"] == "78.128.9.202"
    # fw 1: `addr` stands for dst_addr, no result list
    assert rtts[1340523908] == [124.572] and rows[1340523908][0]["dst_addr"] == "62.2.16.12"
    assert rows[1340523908][0]["src_addr"] == "194.85.27.7" and rows[1340523908][0]["ip_version"] == 4
    assert rtts[1378271710] == [-1.0, -1.0, 27.301]  # timeouts with `srcaddr` keys
    assert rtts[1395277728] == [-1.0, 27.768]  # two dup replies give no row
    assert rtts[1394745831] == [-1.0]  # only a timeout besides two dups
    assert rtts[1395416383] == [63.213, 47.941, 60.268]  # `ttl` keys ignored
    assert rtts[1384500425] == [36.741, 36.66, 36.424]  # no src_addr at all, public `from`
    assert len(rows) == 15 and parsed.stats["results"] == 15
    assert parsed.stats["rows"] == 2 + 11 * 3 + 2 + 1  # 2 legacy, 11 plain results, the two with dups
    assert parsed.stats["packets_dup_skipped"] == 4
    assert all(r["src_addr"] != "192.168.1.229" for r in parsed.table.to_pylist())


def test_source_rule_prefers_public_from_then_public_src_addr(tmp_path: Path) -> None:
    path = _dump(tmp_path, [
        _ping(prb_id=1),  # public from
        _ping(prb_id=2, **{"from": "10.1.2.3"}, src_addr="9.9.9.9"),  # private from, public src_addr
        _ping(prb_id=3, **{"from": "2001:4860::1"}, src_addr="9.9.9.10"),  # from of the wrong family
        _ping(prb_id=4, **{"from": "100.64.0.1"}, src_addr="172.16.0.1"),  # nothing public
    ])  # fmt: skip
    parsed = parse_file(path)
    src = {r["prb_id"]: r["src_addr"] for r in parsed.table.to_pylist()}
    assert src == {1: "8.8.4.4", 2: "9.9.9.9", 3: "9.9.9.10"}
    assert parsed.stats["results_no_public_source"] == 1 and parsed.stats["results"] == 4


def test_ipv6_rows_are_canonical_and_private_destinations_rejected(tmp_path: Path) -> None:
    v6 = {"af": 6, "from": "2A00:1450:4001:0000::1", "src_addr": "fe80::1", "dst_addr": "2001:500:2F::F"}
    path = _dump(tmp_path, [
        _ping(**v6),
        _ping(dst_addr="192.168.0.1"), _ping(dst_addr="127.0.0.1"), _ping(dst_addr="203.0.113.5"),
        _ping(af=6, **{"from": "2001:4860::1"}, dst_addr="fd00::1"), _ping(dst_addr="2001:500:2f::f"),
        _ping(dst_addr="not-an-ip"),
    ])  # fmt: skip
    parsed = parse_file(path)
    rows = parsed.table.to_pylist()
    assert len(rows) == 3 and {r["ip_version"] for r in rows} == {6}
    assert rows[0]["src_addr"] == "2a00:1450:4001::1" and rows[0]["dst_addr"] == "2001:500:2f::f"
    assert parsed.stats["rejected_dst_not_global"] == 4
    assert parsed.stats["rejected_bad_address"] == 2  # wrong family and unparseable


def test_garbage_wrong_types_and_absurd_rtts_are_counted_by_reason(tmp_path: Path) -> None:
    path = _dump(tmp_path, [
        _ping(),
        "{not json", "", "[1, 2, 3]", json.dumps(_ping(type="traceroute")),
        json.dumps(_ping(prb_id="abc")), json.dumps(_ping(timestamp=None)), json.dumps(_ping(af=5)),
        json.dumps(_ping(result="oops")),
        json.dumps(_ping(result=[{"rtt": -5.0}])), json.dumps(_ping(result=[{"rtt": 700_000.0}])),
        json.dumps(_ping(result=[{"rtt": "fast"}])),
        json.dumps(_ping(dst_addr=None, error="dns failed")),
    ])  # fmt: skip
    parsed = parse_file(path, ParseConfig(reject_sample=5))
    s = parsed.stats
    assert parsed.table.num_rows == 3 and s["results_used"] == 1
    expected = {"bad_json": 1, "blank_line": 1, "not_object": 1, "not_ping": 1, "wrong_type": 2,
                "missing_field": 1, "bad_af": 1, "rtt_out_of_range": 2, "bad_packet": 1, "error_no_dst": 1}  # fmt: skip
    assert {k[9:]: v for k, v in s.items() if k.startswith("rejected_")} == expected
    assert s["results"] == 13 - 4  # lines that are ping results, usable or not
    assert len(parsed.rejects) == 5 and parsed.rejects[0] == {
        "reason": "bad_json",
        "line_no": 2,
        "text": "{not json",
    }


def test_failed_packets_and_empty_results_give_failed_rows(tmp_path: Path) -> None:
    path = _dump(tmp_path, [
        _ping(prb_id=1, result=[{"x": "*"}, {"error": "Network is unreachable"}, {"rtt": 5.0, "ttl": 50}]),
        _ping(prb_id=2, result=[], rcvd=0),
        _ping(prb_id=3, result=None, rcvd="2", avg="12.5"),
    ])  # fmt: skip
    got = [(r["prb_id"], r["rtt"]) for r in parse_file(path).table.to_pylist()]
    assert got == [(1, -1.0), (1, -1.0), (1, 5.0), (2, -1.0), (3, 12.5)]


@pytest.mark.parametrize(("collapse", "expected"), [("min", [5.0, -1.0]), ("median", [7.0, -1.0])])
def test_collapse_gives_one_row_per_result(tmp_path: Path, collapse: str, expected: list) -> None:
    path = _dump(tmp_path, [
        _ping(result=[{"rtt": 9.0}, {"x": "*"}, {"rtt": 5.0}, {"rtt": 7.0}]), _ping(result=[{"x": "*"}]),
    ])  # fmt: skip
    assert parse_file(path, ParseConfig(collapse=collapse)).table.column("rtt").to_pylist() == expected


def test_truncated_bz2_keeps_lines_before_the_damage(tmp_path: Path) -> None:
    lines = [_ping(prb_id=i, timestamp=1_700_000_000 + i) for i in range(20_000)]
    whole = _dump(tmp_path, lines).read_bytes()
    cut = tmp_path / "ping-2024-01-01T0100.bz2"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    parsed = parse_file(cut, ParseConfig(block_bytes=1 << 16))
    assert parsed.truncated and "truncated" in parsed.error
    assert 0 < parsed.stats["results"] < 20_000
    assert parsed.table.num_rows == 3 * parsed.stats["results"]
    prb = parsed.table.column("prb_id").to_pylist()
    assert prb[::3] == list(range(parsed.stats["results"]))  # a prefix, in order, whole results only


def test_corrupt_and_missing_files_report_status_instead_of_raising(tmp_path: Path) -> None:
    good = _dump(tmp_path, [_ping()]).read_bytes()
    bad = tmp_path / "corrupt.bz2"
    bad.write_bytes(good[:10] + b"\x00" * 40 + good[50:])
    parsed = parse_file(bad)
    assert parsed.truncated and parsed.error and parsed.table.num_rows == 0
    summary = parse_files([bad, tmp_path / "absent.bz2"], tmp_path / "o.parquet", ParseConfig(workers=1))
    assert len(summary.truncated_files) == 1 and len(summary.errors) == 2 and summary.rows == 0
    assert summary.parts == [str(tmp_path / "o-0.parquet"), str(tmp_path / "o-1.parquet")]
    for part in summary.parts:  # every input file has its part, empty ones included
        assert pq.read_table(part).schema.names == MEASUREMENT_SCHEMA.names
    empty = parse_files([], tmp_path / "e" / "part-0.parquet")
    assert pq.read_table(tmp_path / "e" / "part-0.parquet").num_rows == 0 and empty.rows == 0


def test_parse_files_concatenates_in_order_and_reports_progress(tmp_path: Path) -> None:
    a = _dump(tmp_path, [_ping(prb_id=1)], "a.bz2")
    b = _dump(tmp_path, [_ping(prb_id=2, dst_addr="9.9.9.9")], "b.bz2")
    seen: list[str] = []
    out = tmp_path / "date=2024-01-01" / "part-0.parquet"
    summary = parse_files([a, b], out, ParseConfig(workers=2), progress=seen.append)
    assert _read_parts(summary.parts).column("prb_id").to_pylist() == [1, 1, 1, 2, 2, 2]
    assert summary.stats["probes"] == 2 and summary.stats["destinations"] == 2
    assert summary.stats["public_sources"] == 1 and len(seen) == 2
    glob = str(tmp_path / "*" / "*.parquet")  # how the measurements asset reads the table back
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{glob}'").fetchall()[0][0] == 6


def test_rerun_replaces_the_slice_and_leaves_other_files(tmp_path: Path) -> None:
    day = tmp_path / "date=2024-01-01"
    files = [_dump(tmp_path, [_ping(prb_id=i)], f"{i}.bz2") for i in range(3)]
    parse_files(files, day / "part-0.parquet", ParseConfig(workers=1))
    (day / "notes.parquet").write_bytes(b"")  # not one of ours: kept
    summary = parse_files(files[:1], day / "part-0.parquet", ParseConfig(workers=1))
    assert sorted(p.name for p in day.iterdir()) == ["notes.parquet", "part-0.parquet"]
    assert summary.parts == [str(day / "part-0.parquet")] and pq.read_table(summary.parts[0]).num_rows == 3


def test_config_rejects_unknown_collapse() -> None:
    with pytest.raises(ValueError):
        ParseConfig(collapse="mean")

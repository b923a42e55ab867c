"""Parser behaviour: real dumps agree with their independent manifests, legacy and hostile input."""

from __future__ import annotations

import bz2
import ipaddress
import json
import random
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pingllm_core.ingest.bz2_lines as bz2_lines
import pingllm_core.ingest.parse_address as parse_address
import pingllm_core.ingest.parse_block as parse_block
from pingllm_core.ingest.parse import MANIFEST_KEYS, parse_file, parse_files
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA, ParseConfig

REAL = Path(__file__).resolve().parent / "data" / "ripe-public"  # public RIPE Atlas samples
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


# --- the fast path (parse_fast.py) against the generic SQL parser it falls back to ---------------------------


def _same_parse(path: Path, **cfg) -> tuple:
    """Parse with the fast path and with the generic parser only; both must give identical results."""
    fast = parse_file(path, ParseConfig(**cfg))
    slow = parse_file(path, ParseConfig(fast_path=False, **cfg))
    assert fast.table.equals(slow.table)
    assert fast.stats == slow.stats
    assert fast.rejects == slow.rejects
    assert (fast.truncated, fast.error) == (slow.truncated, slow.error)
    return fast, slow


def _hostile_lines(rng: random.Random, n: int, valid_json: bool) -> list[str]:
    """Ping results with every kind of value the typed read could take differently from the generic one."""
    odd = [None, True, False, 0, 1, 4, 6, 5, 4.0, 4.5, "4", " 6", "abc", [], {}, 2**40, -5, 1e3, "1e3", "0x10",
           1_700_000_000, 1.7e9, "1700000000", 4_102_444_801, 12.5]  # fmt: skip
    rtts = [None, 0, 0.0, 1, 1.0, True, False, -1, -1.0, -0.5, 5.5, "12.5", "fast", "nan", 600_000.1, [], {}]
    packets = [
        lambda: {"rtt": round(rng.uniform(0.1, 400), 3)}, lambda: {"x": "*"}, lambda: {"error": "unreachable"},
        lambda: {"rtt": rng.choice(rtts)}, lambda: {"rtt": rng.choice(rtts), "x": "*"}, lambda: {"dup": 1},
        lambda: {"rtt": rng.choice(rtts), "dup": 1}, lambda: {"rtt": 5.0, "ttl": 50}, lambda: rng.choice([5, None]),
        lambda: {"rtt": rng.choice(rtts), "error": "boom"},
    ]  # fmt: skip
    out = []
    for _ in range(n):
        d = _ping(prb_id=rng.randrange(2, 50), timestamp=1_700_000_000 + rng.randrange(3600))
        d["result"] = [rng.choice(packets[:3] * 4 + packets)() for _ in range(rng.choice([1, 3, 3, 4]))]
        if rng.random() < 0.3:
            d.update(af=6, dst_addr="2001:500:2F::F", **{"from": f"2A00:1450::{rng.randrange(1, 99):x}"})
        for _ in range(rng.choice([0, 0, 1, 2])):
            key = rng.choice(
                ["af", "prb_id", "timestamp", "from", "src_addr", "dst_addr", "type", "result", "rcvd"]
            )
            d[key] = rng.choice(odd + ["10.0.0.1", "fe80::1", "ping", "traceroute", [{"x": "*"}], "oops"])
        s = json.dumps(d, separators=rng.choice([(",", ":"), (", ", ": ")]))
        r = rng.random()
        if r < 0.03:
            s = s.replace('"rtt"', '"r\\u0074t"', 1)  # an escaped key: the text check must not be fooled
        elif r < 0.06:
            s = s[:-1] + ', "rtt": 5, "af": 4, "prb_id": true}'  # duplicate keys
        elif r < 0.08 and not valid_json:
            s = rng.choice(["", "{not json", "[1, 2]", "null", s[: len(s) // 2]])
        out.append(s)
    return out


@pytest.mark.parametrize("valid_json", [True, False])
def test_fast_path_agrees_with_the_generic_parser_on_hostile_input(
    tmp_path: Path, valid_json: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = Counter()
    real = parse_block.parse_fast

    def spy(*args, **kwargs):
        block = real(*args, **kwargs)
        taken["fast"] += block.counts["lines"]
        taken["slow"] += len(block.slow)
        return block

    monkeypatch.setattr(parse_block, "parse_fast", spy)  # looked up where a block is parsed
    path = _dump(tmp_path, _hostile_lines(random.Random(7 + valid_json), 3000, valid_json))
    for collapse in ("packet", "min", "median"):
        fast, _ = _same_parse(path, collapse=collapse, reject_sample=40)
    assert taken["fast"] > 1000 and taken["slow"] > 300  # both paths really ran
    assert fast.stats["rejected_bad_packet"] and fast.stats["rejected_wrong_type"]


def test_fast_path_values_that_may_have_been_booleans_or_bad_rtts(tmp_path: Path) -> None:
    path = _dump(tmp_path, [
        _ping(prb_id=1, result=[{"rtt": 1.0}, {"rtt": 0.0}]),  # real 0 and 1: rows
        json.dumps(_ping(prb_id=True)), json.dumps(_ping(timestamp=True)),  # booleans: wrong_type
        json.dumps(_ping(result=[{"rtt": True}])), json.dumps(_ping(result=[{"rtt": False, "x": "*"}])),
        json.dumps(_ping(result=[{"rtt": "fast", "x": "*"}, {"rtt": 3.0}])),  # bad_packet, not a timeout
        json.dumps(_ping(result=[{"x": "*"}, {"rtt": 3.0}])).replace('"rtt"', '"r\\u0074t"'),  # escaped key
        json.dumps(_ping(result=[{"x": "*"}, {"rtt": 3.0}], msm_name="rtt")),  # "rtt" elsewhere: still a row
        json.dumps(_ping(prb_id=3, result=[{"rtt": 2.5}], note="true")),  # the word true elsewhere
    ])  # fmt: skip
    fast, _ = _same_parse(path)
    assert fast.table.column("rtt").to_pylist() == [1.0, 0.0, -1.0, 3.0, -1.0, 3.0, 2.5]
    assert fast.stats["rejected_wrong_type"] == 2 and fast.stats["rejected_bad_packet"] == 3


def test_block_size_and_damage_do_not_change_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bz2_lines, "_READ_BYTES", 1 << 15)  # many compressed chunks, so many blocks
    lines = _hostile_lines(random.Random(3), 30_000, valid_json=False)
    whole = bz2.compress(("\n".join(lines) + "\n").encode())
    for name, data in [("whole", whole), ("cut", whole[: len(whole) * 3 // 4])]:
        path = tmp_path / f"ping-{name}.bz2"
        path.write_bytes(data)
        small = parse_file(path, ParseConfig(block_bytes=1 << 16, reject_sample=30))
        big = parse_file(path, ParseConfig(reject_sample=30))
        assert small.table.equals(big.table) and small.stats == big.stats and small.rejects == big.rejects
        assert small.truncated == (name == "cut") and small.stats["results"] > 10_000


def test_pool_workers_do_not_share_the_parents_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bz2_lines, "_READ_BYTES", 1 << 15)  # many blocks per file
    lines = [json.dumps(_ping(prb_id=i % 5000 + 2, timestamp=1_700_000_000 + i)) for i in range(40_000)]
    paths = [_dump(tmp_path, lines, f"ping-{k}.bz2") for k in range(3)]
    expected = parse_file(paths[0], ParseConfig(block_bytes=1 << 20))  # leaves buffers in this process
    summary = parse_files(
        paths, tmp_path / "out" / "part-0.parquet", ParseConfig(workers=2, block_bytes=1 << 20)
    )
    for part in summary.parts:
        assert pq.read_table(part).cast(MEASUREMENT_SCHEMA).equals(expected.table)


def test_ipv6_fast_classification_matches_ipaddress() -> None:
    rng = random.Random(5)
    texts = ["::ffff:1.2.3.4", "::1.2.3.4", "::", "::1", "fe80::1%eth0", "2001:db8::1", "2001:DB8:0:0:1::1",
             "1:0:0:2:0:0:3:4", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:1.2.3.4", "00001::", "2001:4860::0001"]  # fmt: skip
    for _ in range(20_000):
        groups = [rng.choice([0, 0, 1, 0xFFFF, rng.randrange(65536)]) for _ in range(8)]
        texts.append(":".join(f"{g:x}" if rng.random() < 0.5 else f"{g:04X}" for g in groups))
        texts.append(str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))))
    for text in texts:
        assert parse_address._classify_v6(text) == parse_address._classify_slow(text), text

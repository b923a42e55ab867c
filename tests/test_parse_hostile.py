"""Hostile input never raises and never loses other data: every line becomes rows or exactly one counted reject,
no state passes from one file to the next, and a killed parse leaves nothing behind on the next run."""

from __future__ import annotations

import bz2
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pingllm_core.ingest.parse_block as parse_block
from pingllm_core.ingest.parse import parse_file, parse_files
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA, ParseConfig

REAL = Path(__file__).resolve().parent / "data" / "ripe-public"  # public RIPE Atlas samples
STARLINK = REAL / "starlink" / "2022-12-15" / "ping-2022-12-15T1600.bz2"
FIELDS = ("type", "af", "prb_id", "timestamp", "from", "src_addr", "dst_addr", "addr", "rcvd", "avg", "error",
          "result", "dup", "rtt", "x")  # fmt: skip


def _ping(i: int) -> dict:
    """A clean IPv4 ping result whose prb_id tags its line."""
    return {"af": 4, "prb_id": 1000 + i, "timestamp": 1_700_000_000 + i, "from": "8.8.4.4", "dst_addr": "1.1.1.1",
            "type": "ping", "rcvd": 2, "avg": 9.75, "result": [{"rtt": 9.5}, {"rtt": 10.0}]}  # fmt: skip


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(bz2.compress(b"".join(line + b"\n" for line in lines)))
    return path


# Every JSON value type, for every field (and for the fields of a packet).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["4", "6", "8.8.8.8", "2001:4860::8888", "10.0.0.1", "ping", "*", "1e3", " 7"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def hostile_line(draw: st.DrawFn, i: int) -> tuple[bytes, bool]:
    """One dump line (without its newline) and whether it holds invalid UTF-8."""
    d = _ping(i)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        d[key] = draw(json_values)
    if draw(st.booleans()):
        d["result"] = draw(st.lists(st.dictionaries(st.sampled_from(("rtt", "x", "error", "dup")), json_values),
                                    max_size=3))  # fmt: skip
    line = json.dumps(d).encode()  # Python writes NaN and Infinity, which are not JSON: hostile too
    kind = draw(st.sampled_from(["json"] * 5 + ["bytes", "nul", "bad_utf8", "cut"]))
    if kind == "bytes":
        line = draw(st.binary(max_size=40)).replace(b"\n", b"")
    elif kind == "nul":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + b"\x00" + line[at:]
    elif kind == "bad_utf8":
        at = draw(st.integers(0, len(line)))
        line = (
            line[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]))
            + line[at:]
        )
    elif kind == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    try:
        line.decode("utf-8")
        return line, False
    except UnicodeDecodeError:
        return line, True


@st.composite
def hostile_dump(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    return [draw(hostile_line(i)) for i in range(draw(st.integers(1, 12)))]


def _every_line_is_rows_or_one_reject(parsed, n_lines: int, n_invalid: int) -> None:
    s = parsed.stats
    assert parsed.failed is None and parsed.error is None, parsed.error
    rejected = {k[9:]: v for k, v in s.items() if k.startswith("rejected_")}
    assert s["lines"] == n_lines
    used = s.get("results_used", 0)
    assert used + s["results_no_public_source"] + sum(rejected.values()) == n_lines, s
    assert s.get("rejected_bad_utf8", 0) == n_invalid
    # With room for every reject, the sample lists each rejected line once, with the reason it was counted under.
    sample = [r["line_no"] for r in parsed.rejects]
    assert len(sample) == len(set(sample)) == sum(rejected.values())
    assert {r: sum(1 for x in parsed.rejects if x["reason"] == r) for r in rejected} == rejected
    assert s["rows"] == parsed.table.num_rows >= used


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dump=hostile_dump())
@pytest.mark.slow
def test_hostile_lines_become_rows_or_one_counted_reject_each(tmp_path: Path, dump) -> None:
    path = _write(tmp_path / "ping-hostile.bz2", [line for line, _ in dump])
    n_invalid = sum(bad for _, bad in dump)
    fast = parse_file(path, ParseConfig(reject_sample=100))
    reference = parse_file(path, ParseConfig(reject_sample=100, fast_path=False, fast_bz2=False))
    for parsed in (fast, reference):
        _every_line_is_rows_or_one_reject(parsed, len(dump), n_invalid)
    assert (
        fast.table.equals(reference.table)
        and fast.stats == reference.stats
        and fast.rejects == reference.rejects
    )
    assert fast.table.schema.equals(MEASUREMENT_SCHEMA)


def test_a_20_mb_line_is_rows_or_one_reject(tmp_path: Path) -> None:
    huge = "x" * (20 << 20)  # 20 MiB
    lines = [
        json.dumps(_ping(0)).encode(),
        json.dumps({**_ping(1), "dst_name": huge}).encode(),  # valid: its rows are kept
        huge.encode(),  # garbage: one bad_json
        json.dumps({**_ping(2), "dst_name": huge}).encode()[:-2] + b'\xff"}',  # invalid UTF-8 at its end
        json.dumps(_ping(3)).encode(),
    ]
    path = _write(tmp_path / "ping-huge.bz2", lines)
    for cfg in (
        ParseConfig(reject_sample=10),
        ParseConfig(reject_sample=10, fast_path=False, block_bytes=1 << 20),
    ):
        parsed = parse_file(path, cfg)
        _every_line_is_rows_or_one_reject(parsed, 5, 1)
        assert parsed.table.column("prb_id").to_pylist() == [1000, 1000, 1001, 1001, 1003, 1003]
        assert [(r["line_no"], r["reason"]) for r in parsed.rejects] == [(3, "bad_json"), (4, "bad_utf8")]
        assert max(len(r["text"]) for r in parsed.rejects) <= 300


def test_invalid_utf8_inside_a_json_string_is_one_reject_and_the_next_file_keeps_every_row(
    tmp_path: Path,
) -> None:
    # The byte that used to make DuckDB raise an internal error and lose the worker's connection for later files.
    bad = json.dumps({**_ping(0), "dst_name": "k.root-servers.net"}).encode().replace(b"root", b"r\xf6ot")
    hostile = _write(tmp_path / "ping-a.bz2", [json.dumps(_ping(i)).encode() for i in range(1, 4)] + [bad])
    summary = parse_files([hostile, STARLINK], tmp_path / "out" / "part-0.parquet", ParseConfig(workers=1))
    assert not summary.failed and summary.stats["rejected_bad_utf8"] == 1
    assert [pq.read_table(p).num_rows for p in summary.parts] == [6, 9111]  # 3 clean results; the manifest
    assert summary.rejects[0]["reason"] == "bad_utf8" and "r\\xf6ot" in summary.rejects[0]["text"]


def test_an_engine_failure_fails_only_its_file_and_the_next_file_gets_a_fresh_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fast = parse_block.parse_fast
    broken: list[duckdb.DuckDBPyConnection] = []

    def fails_once(con, *args, **kwargs):
        if not broken:  # the old failure: an internal error on invalid UTF-8 invalidates the whole database
            broken.append(con)
            text = b'{"a":"x\xffy"}'  # unchecked bytes, as the parser hands DuckDB its lines without a copy
            offsets = pa.py_buffer(np.array([0, len(text)], np.int64))
            lines = pa.table({"line": pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(text))})
            con.register("bad", lines)
            con.execute("SELECT trim(line, ' \t') FROM bad").fetchall()  # raises InternalException
        assert con is not broken[0]
        with pytest.raises(duckdb.ConnectionException, match="closed"):  # closed with its file, never reused
            broken[0].execute("SELECT 1").fetchall()
        return real_fast(con, *args, **kwargs)

    monkeypatch.setattr(parse_block, "parse_fast", fails_once)
    first = _write(tmp_path / "ping-a.bz2", [json.dumps(_ping(0)).encode()])
    summary = parse_files([first, STARLINK], tmp_path / "out" / "part-0.parquet", ParseConfig(workers=1))
    assert list(summary.failed) == [str(first)], summary.failed
    assert "InternalException" in summary.failed[str(first)]
    assert summary.errors[str(first)] == summary.failed[str(first)]
    assert pq.read_table(summary.parts[1]).num_rows == 9111 and summary.stats["rows"] == 9111


_KILLABLE = """
import sys
from pingllm_core.ingest.parse import ParseConfig, parse_files
parse_files(sys.argv[1:-1], sys.argv[-1], ParseConfig(workers=1, block_bytes=1 << 16))
"""


def test_a_parse_killed_mid_file_leaves_no_temporary_part_after_the_next_run(tmp_path: Path) -> None:
    lines = [json.dumps(_ping(i)).encode() for i in range(60_000)]
    dumps = [_write(tmp_path / f"ping-{k}.bz2", lines) for k in range(2)]
    out = tmp_path / "date=2024-01-01" / "part-0.parquet"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *map(str, dumps), str(out)])
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".part-*.tmp")) if out.parent.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the parse ended before it could be killed"
        )
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.parent.glob(".part-*.tmp")), "the killed run left its temporary part"
    summary = parse_files(dumps, out, ParseConfig(workers=1))
    assert sorted(p.name for p in out.parent.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    clean = parse_files(dumps, tmp_path / "clean" / "part-0.parquet", ParseConfig(workers=1))
    for got, want in zip(summary.parts, clean.parts, strict=True):
        assert pq.read_table(got).equals(pq.read_table(want))
    assert summary.stats == clean.stats and summary.stats["rows"] == 2 * 2 * 60_000

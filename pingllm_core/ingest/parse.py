"""RIPE Atlas hourly ping dumps (bz2 NDJSON) to the measurement table (SPEC section 1).

Hot path: bz2 is decompressed (bz2_lines.py) into a few reused buffers, each block of whole lines becomes
one Arrow string array without a copy, and parse_fast.py reads every line once with a typed DuckDB JSON read
and finishes the clean ping results (nearly all lines) in numpy. Every other line (legacy firmware, garbage,
most rejects) goes to the generic SQL parser here (_PARSE_SQL, _CLASSIFY_SQL), which defines the behaviour on
bad input; tests hold the two paths to identical output. Addresses are classified in Python once per distinct
string (cached). No Python loop runs per result or per row.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import ipaddress
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pingllm_core import db
from pingllm_core.ingest.bz2_lines import (
    Block,
    Bz2Lines,
    FastBz2Lines,
    FastDecodeFailed,
    clear_pool,
    fast_decoder_available,
    invalid_utf8_lines,
    prefetch,
)
from pingllm_core.ingest.parse_fast import (
    AddressBook,
    FastBlock,
    int_array,
    np_values,
    parse_fast,
    string_array,
)

MEASUREMENT_SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("s", tz="UTC")),
        ("src_addr", pa.string()),
        ("dst_addr", pa.string()),
        ("ip_version", pa.int8()),
        ("rtt", pa.float64()),  # ms; -1.0 = failed
        ("prb_id", pa.int32()),
    ]
)
# Keys shared with the independent manifests of the real samples in tests/data/ripe-public.
MANIFEST_KEYS = (
    "results",
    "rows",
    "rows_ok",
    "rows_failed",
    "results_no_public_source",
    "packets_dup_skipped",
    "probes",
    "public_sources",
    "destinations",
)
_REJECT_TEXT_CHARS = 300  # a kept rejected line is cut to this many characters
_MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01; later timestamps are corrupt

# Every top-level value is read as text so that legacy numbers-as-strings cast like numbers; `result` is a
# list of packet structs (a non-list comes back NULL and is told apart from a missing key below).
_LINE_STRUCT = (
    '{"type":"VARCHAR","af":"VARCHAR","prb_id":"VARCHAR","timestamp":"VARCHAR","from":"VARCHAR",'
    '"src_addr":"VARCHAR","dst_addr":"VARCHAR","addr":"VARCHAR","rcvd":"VARCHAR","avg":"VARCHAR",'
    '"error":"VARCHAR","result":[{"rtt":"VARCHAR","x":"VARCHAR","error":"VARCHAR","dup":"VARCHAR"}]}'
)

_SETUP_SQL = """
CREATE OR REPLACE MACRO as_int(v) AS
  coalesce(TRY_CAST(v AS BIGINT), CASE WHEN TRY_CAST(v AS DOUBLE) = floor(TRY_CAST(v AS DOUBLE))
                                       THEN TRY_CAST(TRY_CAST(v AS DOUBLE) AS BIGINT) END);
"""

# Stage 1: one row per line, parsed once; `reason` is set for lines that are not ping results at all.
_PARSE_SQL = f"""
CREATE OR REPLACE TEMP TABLE parsed AS
WITH t AS (  -- one JSON parse per line; TRY gives NULL for invalid JSON (and JSON null), told apart below
  SELECT ln, line, TRY(from_json(line, '{_LINE_STRUCT}')) AS j FROM lines
), j AS (
  SELECT ln, line, j,
    CASE WHEN j IS NULL THEN
           CASE WHEN trim(line, ' \t\r\n') = '' THEN 'blank_line' WHEN NOT json_valid(line) THEN 'bad_json'
                WHEN starts_with(ltrim(line, ' \t'), '{{') THEN 'wrong_type' ELSE 'not_object' END
         WHEN NOT starts_with(line, '{{') AND NOT starts_with(ltrim(line, ' \t'), '{{') THEN 'not_object'
    END AS pre
  FROM t
)
SELECT * EXCLUDE (pk_all, pk),
  coalesce(len(pk_all), 0) - coalesce(len(pk), 0) AS n_dup,
  list_transform(pk, lambda q: CASE WHEN q.rtt IS NOT NULL THEN TRY_CAST(q.rtt AS DOUBLE)
                                    WHEN q.x IS NOT NULL OR q.error IS NOT NULL THEN -1.0 END) AS pr
FROM (SELECT *, list_filter(pk_all, lambda q: q.dup IS NULL) AS pk FROM (
SELECT ln, pre, j.type AS typ, j.af AS af_raw,
  CASE WHEN j.af IS NULL THEN 4 ELSE as_int(j.af) END AS af,  -- legacy firmware: no af means IPv4
  j.prb_id AS prb_raw, as_int(j.prb_id) AS prb, j.timestamp AS ts_raw, as_int(j.timestamp) AS ts,
  j."from" AS from_addr, j.src_addr AS src_raw, coalesce(j.dst_addr, j.addr) AS dst_raw,
  j.error IS NOT NULL AS has_error, as_int(j.rcvd) AS rcvd, TRY_CAST(j.avg AS DOUBLE) AS avg, j.avg AS avg_raw,
  CASE WHEN pre IS NULL AND j.result IS NULL THEN coalesce(json_type(line, '$.result'), 'NULL') <> 'NULL'
       ELSE false END AS bad_result,
  j.result AS pk_all
FROM j))
"""

# Stage 2: per-result classification after the address table `addrs` is known.
_CLASSIFY_SQL = """
CREATE OR REPLACE TEMP TABLE res AS
WITH a AS (
  SELECT p.*, fa.ver AS from_ver, fa.glob AS from_glob, fa.canon AS from_canon,
    sa.ver AS src_ver, sa.glob AS src_glob, sa.canon AS src_canon,
    da.ver AS dst_ver, da.glob AS dst_glob, da.canon AS dst_canon
  FROM parsed p
  LEFT JOIN addrs fa ON fa.addr = p.from_addr
  LEFT JOIN addrs sa ON sa.addr = p.src_raw
  LEFT JOIN addrs da ON da.addr = p.dst_raw
), b AS (
  SELECT *,
    CASE WHEN from_ver = af AND from_glob THEN from_canon WHEN src_ver = af AND src_glob THEN src_canon END AS src,
    -- no usable packet list: legacy rule, rtt = avg when rcvd > 0, else one failed row
    CASE WHEN coalesce(len(pr), 0) > 0 THEN pr
         WHEN rcvd > 0 THEN [CASE WHEN avg = -1.0 THEN -1.0 ELSE avg END]
         ELSE [-1.0] END AS rtts
  FROM a
)
SELECT ln, n_dup, ts, src, dst_canon, af, prb, rtts,
  CASE WHEN pre IS NOT NULL THEN pre
    WHEN typ IS NOT NULL AND typ <> 'ping' THEN 'not_ping'
    WHEN has_error AND dst_raw IS NULL THEN 'error_no_dst'
    WHEN prb_raw IS NULL OR ts_raw IS NULL OR dst_raw IS NULL THEN 'missing_field'
    WHEN prb IS NULL OR ts IS NULL OR af IS NULL OR bad_result THEN 'wrong_type'
    WHEN af NOT IN (4, 6) THEN 'bad_af'
    WHEN prb < 0 OR prb > 2147483647 THEN 'bad_prb_id'
    WHEN ts <= 0 OR ts > {max_ts} THEN 'bad_timestamp'
    WHEN src IS NULL THEN 'no_public_source'
    WHEN dst_ver IS NULL OR dst_ver <> af THEN 'bad_address'
    WHEN NOT dst_glob THEN 'dst_not_global'
    WHEN coalesce(len(pr), 0) = 0 AND rcvd IS NULL AND n_dup = 0 THEN 'missing_field'
    WHEN coalesce(len(pr), 0) = 0 AND rcvd > 0 AND avg IS NULL THEN 'wrong_type'
    WHEN list_count(rtts) < len(rtts) THEN 'bad_packet'
    WHEN len(list_filter(rtts, lambda r: (r < 0 AND r <> -1.0) OR r > {max_rtt} OR isnan(r))) > 0
      THEN 'rtt_out_of_range'
  END AS reason
FROM b
"""

_ROWS_SQL = """
SELECT ln, ts, src, dst_canon AS dst, af::TINYINT AS ver, {rtt_expr} AS rtt, prb::INTEGER AS prb
FROM res WHERE reason IS NULL
"""  # no ORDER BY: one thread with DuckDB's default insertion-order preservation keeps line and packet order
_COLLAPSE_RTT = {
    "packet": "unnest(rtts)",
    "min": "coalesce(list_min(list_filter(rtts, lambda r: r >= 0)), -1.0)",
    "median": "coalesce(list_aggregate(list_filter(rtts, lambda r: r >= 0), 'median'), -1.0)",
}


@dataclass(frozen=True)
class ParseConfig:
    """How dump lines become measurement rows."""

    collapse: Literal["packet", "min", "median"] = "packet"  # one row per packet, or one per result
    max_rtt_ms: float = 600_000.0  # larger RTTs (ms) reject their result: 10 minutes
    reject_sample: int = 20  # rejected lines kept per file for inspection
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes in parse_files
    block_bytes: int = 64 << 20  # decompressed bytes handed to DuckDB at once (memory vs overhead)
    fast_path: bool = True  # False: every line through the generic SQL parser (the reference the tests use)
    fast_bz2: bool = True  # False: only the standard library's bz2 decoder (the reference for damaged files)
    # decompress the next block in a thread while this one is parsed; None: only where a core is spare
    # (parse_files: 2 * workers <= CPUs), as two busy threads per core cost more CPU time for little gain
    prefetch: bool | None = None

    def __post_init__(self) -> None:
        if self.collapse not in _COLLAPSE_RTT:
            raise ValueError(f"collapse must be one of {sorted(_COLLAPSE_RTT)}, got {self.collapse!r}")
        if not self.max_rtt_ms > 0:
            raise ValueError("max_rtt_ms must be positive")
        if self.reject_sample < 0 or self.workers < 1 or self.block_bytes < 1024:
            raise ValueError("reject_sample >= 0, workers >= 1 and block_bytes >= 1024 are required")


@dataclass
class ParsedFile:
    """One dump file's rows, counts (manifest keys plus rejected_<reason>) and a sample of rejected lines."""

    path: str
    table: pa.Table
    stats: dict[str, int]
    rejects: list[dict]
    truncated: bool = False
    error: str | None = None  # damage (what was read before it is kept) or why the parse failed
    failed: str | None = None  # set when the file could not be parsed to its end (not damage): why


@dataclass
class ParseSummary:
    """Totals of a parse_files run; `stats` uses the manifest keys with distinct counts across files."""

    out_path: str
    files: int
    rows: int
    stats: dict[str, int]
    rejects: list[dict]
    truncated_files: list[str]
    errors: dict[str, str]  # file -> damage or failure, for every file that had either
    seconds: float
    rows_per_s: float
    parts: list[str] = field(default_factory=list)  # the Parquet part files written, one per input file
    failed: dict[str, str] = field(default_factory=dict)  # file -> why it could not be parsed to its end


def _ranges(cidrs: str) -> tuple[list[int], list[int]]:
    """Sorted (starts, ends) of CIDR blocks, for bisect lookups."""
    nets = sorted(ipaddress.ip_network(c) for c in cidrs.split())
    return [int(n.network_address) for n in nets], [int(n.broadcast_address) for n in nets]


# Not global unicast (IANA special-purpose registries): private, shared, loopback, link-local, documentation,
# benchmarking, 6to4 relay, multicast and reserved. IPv6 global unicast is 2000::/3 minus these.
_V4_SPECIAL = _ranges(
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.0.2.0/24 "
    "192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 224.0.0.0/3"
)
_V6_SPECIAL = _ranges("::/3 2001::/23 2001:db8::/32 2002::/16 3fff::/20 4000::/2 8000::/1")


def _classify_slow(text: str) -> tuple[int | None, bool, str | None]:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, False, None
    starts, ends = _V4_SPECIAL if ip.version == 4 else _V6_SPECIAL
    n = int(ip)
    i = bisect.bisect_right(starts, n) - 1
    return ip.version, not (i >= 0 and n <= ends[i]), str(ip)


@functools.lru_cache(maxsize=1 << 20)
def classify_address(text: str) -> tuple[int | None, bool, str | None]:
    """(IP version or None, is global unicast, canonical text) for an address string; cached per process."""
    try:  # fast path: an IPv4 address already in canonical dotted-quad form (the common case)
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return _classify_v6(text)
    if socket.inet_ntop(socket.AF_INET, packed) != text:  # leading zeros and the like: ipaddress decides
        return _classify_slow(text)
    n = int.from_bytes(packed, "big")
    i = bisect.bisect_right(_V4_SPECIAL[0], n) - 1
    return 4, not (i >= 0 and n <= _V4_SPECIAL[1][i]), text


def _classify_v6(text: str) -> tuple[int | None, bool, str | None]:
    """IPv6 through the C parser (ipaddress costs ~10 us an address, which adds up on a cold cache). For an
    address outside ::/80, inet_ntop's text is RFC 5952 form, the same as ipaddress's str(); the IPv4-mapped
    and -compatible forms print differently, so those (and anything inet_pton rejects) go to ipaddress."""
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return _classify_slow(text)
    if not any(packed[:10]):
        return _classify_slow(text)
    n = int.from_bytes(packed, "big")
    i = bisect.bisect_right(_V6_SPECIAL[0], n) - 1
    return 6, not (i >= 0 and n <= _V6_SPECIAL[1][i]), socket.inet_ntop(socket.AF_INET6, packed)


_ADDRESS_BOOK = AddressBook(classify_address)  # per process, shared by the files it parses
os.register_at_fork(after_in_child=_ADDRESS_BOOK.after_fork)  # a forked worker gets a fresh lock


def _line_ends(block: memoryview) -> np.ndarray:
    """End offset (after the newline) of every line of a block of newline-ended lines."""
    data = np.frombuffer(block, np.uint8)
    step = 1 << 18  # compare in cache-sized slices: one 64 MB boolean temporary costs more than the scan
    parts = [np.flatnonzero(data[i : i + step] == 10) + (i + 1) for i in range(0, len(data), step)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _blank_invalid_utf8(block: Block, ends: np.ndarray) -> dict[int, str]:
    """Overwrite every line of the block that is not valid UTF-8 with spaces, so that DuckDB (whose strings must
    be UTF-8: an invalid byte is an internal error that breaks its connection) reads a blank line there; returns
    {line index in the block: its text, invalid bytes as \\x escapes} for the reject count and sample."""
    texts = {}
    for i in invalid_utf8_lines(block.view(), ends).tolist():
        start, end = (int(ends[i - 1]) if i else 0), int(ends[i]) - 1  # the newline stays
        texts[i] = block.data[start:end].decode("utf-8", "backslashreplace")
        block.data[start:end] = b" " * (end - start)
    return texts


def _as_bad_utf8(counts: Counter, n: int) -> None:
    """Count n blanked lines (which the parsers counted as blank lines) as invalid UTF-8 instead."""
    counts["rejected_blank_line"] -= n
    if not counts["rejected_blank_line"]:
        del counts["rejected_blank_line"]
    counts["rejected_bad_utf8"] += n


def _lines_table(block: memoryview, ends: np.ndarray, first_ln: int) -> pa.Table:
    """Arrow table (ln, line) over a block of newline-ended lines, built without copying the text."""
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0], offsets[1:] = 0, ends
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    ln = np.arange(first_ln, first_ln + len(ends), dtype=np.int64)
    # from_buffers, not pa.array(numpy): the latter imports pandas on first use (a fifth of a second per worker)
    return pa.Table.from_arrays([int_array(ln), lines], names=["ln", "line"])


def _add_new_addresses(con: duckdb.DuckDBPyConnection) -> None:
    """Classify the block's address strings not seen earlier in this file and add them to `addrs`."""
    texts = [
        a
        for (a,) in con.execute(
            "SELECT DISTINCT a FROM (SELECT from_addr AS a FROM parsed UNION ALL SELECT src_raw FROM parsed "
            "UNION ALL SELECT dst_raw FROM parsed) x WHERE a IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM addrs WHERE addrs.addr = x.a)"
        ).fetchall()
    ]
    if not texts:
        return
    ver, glob, canon = zip(*map(classify_address, texts), strict=True)
    fresh = pa.Table.from_arrays(  # noqa: F841 - read by DuckDB below
        [
            string_array(texts),
            int_array(np.array([v or 0 for v in ver], np.int8)),
            int_array(np.array(glob, np.int8)),
            string_array([c or "" for c in canon]),
        ],
        names=["addr", "ver", "is_global", "canon"],
    )
    con.execute(  # ver 0 marks an unparseable string: NULL version and canonical text, as before
        "INSERT INTO addrs SELECT addr, nullif(ver, 0), is_global::BOOLEAN, CASE WHEN ver <> 0 THEN canon END FROM fresh"
    )


_LINE_REASONS = ("blank_line", "bad_json", "not_object", "not_ping")  # lines that are not ping results


def _parse_generic(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, cfg: ParseConfig, counts: Counter, room: int
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The complete parser in SQL, for any line: rows (with their line number `ln`), counts added to
    `counts`, and up to `room` rejected lines as (ln, reason). parse_fast sends it every line it does not
    take, so it decides all legacy and bad-input behaviour."""
    con.register("lines", lines)
    con.execute(_PARSE_SQL)
    _add_new_addresses(con)
    con.execute(_CLASSIFY_SQL.format(max_ts=_MAX_TIMESTAMP, max_rtt=float(cfg.max_rtt_ms)))
    for reason, n, dups in con.execute(
        "SELECT reason, count(*), sum(n_dup) FROM res GROUP BY reason"
    ).fetchall():
        counts["lines"] += n
        if reason not in _LINE_REASONS:
            counts["results"] += n
        if reason is None:
            counts["results_used"] += n
            counts["packets_dup_skipped"] += int(dups or 0)
        elif reason == "no_public_source":
            counts["results_no_public_source"] += n
        else:
            counts[f"rejected_{reason}"] += n
    sample: list[tuple[int, str]] = []
    if room > 0:
        sample = [
            (ln, reason)
            for reason, ln in con.execute(
                "SELECT reason, ln FROM res WHERE reason IS NOT NULL AND reason <> 'no_public_source' "
                "ORDER BY ln LIMIT ?",
                [room],
            ).fetchall()
        ]
    rows = con.sql(_ROWS_SQL.format(rtt_expr=_COLLAPSE_RTT[cfg.collapse])).to_arrow_table()
    con.unregister("lines")
    con.execute("DROP TABLE parsed; DROP TABLE res")  # free the block's memory before the next one
    return rows, sample


def _parse_block(
    con: duckdb.DuckDBPyConnection,
    block: Block,
    first_ln: int,
    cfg: ParseConfig,
    counts: Counter,
    rejects: list[dict],
) -> tuple[pa.Table, int, dict[str, pa.Array]]:
    """Parse one block of lines into measurement rows; adds counts and rejected-line samples. Returns the
    rows, the number of lines in the block and the rows' prb_id, src_addr and dst_addr values (deduplicated
    within the block, for the distinct counts)."""
    ends = _line_ends(block.view())
    invalid = _blank_invalid_utf8(block, ends)
    lines = _lines_table(block.view(), ends, first_ln)
    room = cfg.reject_sample - len(rejects)
    if cfg.fast_path:
        con.register("lines", lines)
        fast = parse_fast(
            con,
            block.data,
            ends,
            collapse=cfg.collapse,
            max_rtt=float(cfg.max_rtt_ms),
            max_ts=_MAX_TIMESTAMP,
            book=_ADDRESS_BOOK,
            reject_room=room,
        )
        con.unregister("lines")
    else:
        fast = FastBlock.everything_slow(len(ends))
    counts.update(fast.counts)
    cols, keys = fast.columns, fast.keys
    sample = [(first_ln + i, reason) for i, reason in fast.rejects]
    if len(fast.slow):  # legacy firmware, garbage and most rejects: the generic parser, merged in line order
        slow_rows, slow_sample = _parse_generic(con, lines.take(int_array(fast.slow)), cfg, counts, room)
        sample = sorted(sample + slow_sample)
        if slow_rows.num_rows:
            keys = {
                k: pa.concat_arrays([v, pc.unique(_col(slow_rows, c, arrow=True))])
                for k, v, c in _slow_keys(keys)
            }
            row_ln = np.concatenate([fast.row_line + first_ln, _col(slow_rows, "ln")])
            order = np.argsort(row_ln, kind="stable")  # two sorted runs: a linear merge
            cols = {
                name: _merged(col, _col(slow_rows, name, arrow=True), order) for name, col in cols.items()
            }
    if invalid:
        _as_bad_utf8(counts, len(invalid))
    for ln, reason in sample[: max(room, 0)]:
        text = invalid.get(ln - first_ln)
        if text is None:
            text = lines.column("line")[ln - first_ln].as_py()
        else:
            reason = "bad_utf8"
        rejects.append({"reason": reason, "line_no": ln + 1, "text": text.rstrip()[:_REJECT_TEXT_CHARS]})
    rtt = np.ascontiguousarray(cols["rtt"], np.float64)
    table = pa.Table.from_arrays(
        [
            int_array(np.ascontiguousarray(cols["ts"], np.int64), pa.timestamp("s", tz="UTC")),
            cols["src"].cast(pa.string()),
            cols["dst"].cast(pa.string()),
            int_array(np.ascontiguousarray(cols["ver"], np.int8)),
            int_array(rtt),
            int_array(np.ascontiguousarray(cols["prb"], np.int32)),
        ],
        schema=MEASUREMENT_SCHEMA,
    )
    ok = int(np.count_nonzero(rtt >= 0))
    counts.update({"rows": table.num_rows, "rows_ok": ok, "rows_failed": table.num_rows - ok})
    return table, len(ends), keys


def _merged(fast: np.ndarray | pa.Array, slow: pa.Array, order: np.ndarray) -> np.ndarray | pa.Array:
    """The fast rows' values then the generic rows', taken in `order`."""
    if isinstance(fast, np.ndarray):
        return np.concatenate([fast, np_values(slow)])[order]
    return pa.concat_arrays([fast, slow]).take(int_array(order))


def _slow_keys(keys: dict[str, pa.Array]) -> Iterator[tuple[str, pa.Array, str]]:
    """(key name, the fast rows' values, the generic rows' column) for the distinct counts."""
    for name, column in (("prb_id", "prb"), ("src_addr", "src"), ("dst_addr", "dst")):
        yield name, keys[name], column


def _col(table: pa.Table, name: str, arrow: bool = False) -> np.ndarray | pa.Array:
    """A column of the generic path's rows as one Arrow array (strings as `string`) or as numpy values."""
    col = table.column(name).combine_chunks()
    if not arrow:
        return np_values(col)
    return col.cast(pa.string()) if pa.types.is_large_string(col.type) else col


def _connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on one thread: files are parallel across processes instead."""
    con = db.connect(threads=1, config={"preserve_insertion_order": True})
    con.execute(_SETUP_SQL)
    con.execute('CREATE TEMP TABLE addrs (addr VARCHAR, ver TINYINT, "glob" BOOLEAN, canon VARCHAR)')
    return con


_UNIQUE_COLUMNS = {"probes": "prb_id", "public_sources": "src_addr", "destinations": "dst_addr"}


RESTART = object()  # _parse_stream's signal: forget this file's tables so far, it is being parsed again


def _parse_stream(
    path: Path, cfg: ParseConfig, counts: Counter, rejects: list[dict], status: dict
) -> Iterator[tuple[pa.Table, dict[str, pa.Array]] | object]:
    """Measurement tables of one dump block by block, each with its distinct keys. Damage lands in `status`
    ("truncated", "error"); a file that could not be parsed to its end (unreadable, an engine failure) sets
    "failed" and "error" instead of raising, and the rows before the failure stay.

    Each file gets a DuckDB connection of its own (~40 ms), closed after it: nothing of one file's parse (a
    table left behind, a connection that an engine error invalidated) can reach the next file.

    The fast decoder reads the file first. If it refuses the file (damage of any kind), `counts` and `rejects`
    are reset, RESTART is yielded (the caller drops the tables it has), and the reference decoder parses the
    file again: it alone decides what a damaged file keeps."""
    decoders = [FastBz2Lines, Bz2Lines] if cfg.fast_bz2 and fast_decoder_available() else [Bz2Lines]
    source = None
    try:
        with contextlib.closing(_connect()) as con:
            for decoder in decoders:
                source = decoder(path, cfg.block_bytes)
                first_ln = 0
                try:
                    for block in prefetch(iter(source)) if _prefetch_pays(cfg, 1) else source:
                        try:
                            table, n_lines, keys = _parse_block(con, block, first_ln, cfg, counts, rejects)
                        finally:
                            block.release()  # nothing of the block's text is referenced any more
                        first_ln += n_lines
                        yield table, keys
                    break
                except FastDecodeFailed:
                    counts.clear()
                    counts.update(_new_counts())
                    rejects.clear()
                    yield RESTART
    except Exception as exc:  # noqa: BLE001 - whatever stopped this file is reported with it; the next goes on
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        status["failed"] = status["error"] = f"{path.name}: {type(exc).__name__}: {text}"
    if source is not None:
        status["truncated"] = source.truncated
        if source.error and "failed" not in status:
            status["error"] = source.error


def _distinct(blocks_keys: list[dict[str, pa.Array]], name: str) -> pa.Array:
    """The distinct values of one key column over all blocks of a file."""
    field_type = MEASUREMENT_SCHEMA.field(name).type
    return pc.unique(pa.chunked_array([k[name].cast(field_type) for k in blocks_keys], field_type))


def _new_counts() -> Counter:
    """Zeros for the keys every file reports, whichever path (fast or generic) its lines took."""
    return Counter(dict.fromkeys((*MANIFEST_KEYS, "lines", "results_used"), 0))


def parse_file(path: str | os.PathLike, cfg: ParseConfig | None = None) -> ParsedFile:
    """Parse one hourly bz2 dump into measurement rows; damage is reported in the result, never raised."""
    cfg = cfg or ParseConfig()
    path = Path(path)
    counts, rejects, status = _new_counts(), [], {}
    parts = []
    try:
        for item in _parse_stream(path, cfg, counts, rejects, status):
            if item is RESTART:
                parts.clear()
            else:
                parts.append(item)
    finally:
        clear_pool()
    table = pa.concat_tables([t for t, _ in parts]) if parts else MEASUREMENT_SCHEMA.empty_table()
    counts.update({k: len(_distinct([keys for _, keys in parts], c)) for k, c in _UNIQUE_COLUMNS.items()})
    return ParsedFile(
        str(path),
        table,
        dict(counts),
        rejects,
        status.get("truncated", False),
        status.get("error"),
        status.get("failed"),
    )


@dataclass
class _PartResult:
    """What a worker sends back: counts, rejects and the distinct keys of its part (never the rows)."""

    path: str
    part: str
    rows: int
    stats: dict[str, int]
    rejects: list[dict]
    uniques: dict[str, pa.Array]
    truncated: bool
    error: str | None
    failed: str | None


# Dictionary pages for the address columns only (the others are near-unique or tiny), and min/max statistics
# for the columns a reader filters on: no string min/max per page, which cost half the writer's time.
# The files come out a little smaller than with the defaults.
_PARQUET_OPTIONS = {
    "use_dictionary": ["src_addr", "dst_addr"],
    "write_statistics": ["event_time", "ip_version", "rtt", "prb_id"],
}


def _parse_to_part(path: str, part: str, cfg: ParseConfig) -> _PartResult:
    """Process-pool entry point: parse one dump and stream its rows into its own Parquet part file."""
    counts, rejects, status = _new_counts(), [], {}
    blocks_keys = []
    writer = pq.ParquetWriter(part, MEASUREMENT_SCHEMA, **_PARQUET_OPTIONS)
    try:
        for item in _parse_stream(Path(path), cfg, counts, rejects, status):
            if item is RESTART:  # the file is parsed again from its start: so is the part file
                writer.close()
                writer = pq.ParquetWriter(part, MEASUREMENT_SCHEMA, **_PARQUET_OPTIONS)
                blocks_keys.clear()
                continue
            table, keys = item
            writer.write_table(table)
            blocks_keys.append(keys)
    finally:
        writer.close()
    distinct = {name: _distinct(blocks_keys, name) for name in _UNIQUE_COLUMNS.values()}
    counts.update({k: len(distinct[c]) for k, c in _UNIQUE_COLUMNS.items()})
    return _PartResult(
        path,
        part,
        counts["rows"],
        dict(counts),
        rejects,
        distinct,
        status.get("truncated", False),
        status.get("error"),
        status.get("failed"),
    )


def _prefetch_pays(cfg: ParseConfig, workers: int) -> bool:
    if cfg.prefetch is not None:
        return cfg.prefetch
    return 2 * workers <= (os.cpu_count() or 1)


def part_paths(out_path: str | os.PathLike, n: int) -> list[Path]:
    """The part files parse_files writes for out_path and n input files: `<dir>/<base>-<k>.parquet`, k = 0..n-1,
    where base is out_path's stem without a trailing `-<number>` (`part-0.parquet` gives part-0, part-1, ...)."""
    out_path = Path(out_path)
    base = re.sub(r"-\d+$", "", out_path.stem)
    return [out_path.with_name(f"{base}-{k}.parquet") for k in range(max(n, 1))]


def _stale_parts(out_path: Path, keep: Sequence[Path]) -> list[Path]:
    """Earlier parts of the same slice (same base name) that a new run does not overwrite."""
    base = re.sub(r"-\d+$", "", out_path.stem)
    pattern = re.compile(rf"{re.escape(base)}-\d+\.parquet")
    keep_names = {p.name for p in keep}
    return [p for p in out_path.parent.iterdir() if pattern.fullmatch(p.name) and p.name not in keep_names]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _leftover_tmps(out_path: Path) -> list[Path]:
    """Temporary parts of this slice left by a run that died before its rename (kill -9, power loss): their
    owner's pid (in the name) is gone. A live owner's are left alone: that run is still writing them."""
    base = re.sub(r"-\d+$", "", out_path.stem)
    pattern = re.compile(rf"\.{re.escape(base)}-\d+\.parquet\.(\d+)\.tmp")
    found = [(p, pattern.fullmatch(p.name)) for p in out_path.parent.iterdir()]
    return [p for p, m in found if m and not _alive(int(m.group(1)))]


def parse_files(
    paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    cfg: ParseConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParseSummary:
    """Parse dump files in parallel processes, each writing its own Parquet part next to out_path
    (`part_paths(out_path, len(paths))`, file order kept by part number); sums counts across files.

    The run replaces its slice: once every part is written, earlier parts of the same base name are removed,
    and so are temporary parts that a killed run left. A file that fails to parse does not stop the others:
    it is in `failed` (and `errors`) with its reason. Only counts, rejected-line samples and the distinct keys
    travel back from the workers."""
    cfg = cfg or ParseConfig()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _leftover_tmps(out_path):
        leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    files = [str(p) for p in paths]
    finals = part_paths(out_path, len(files))
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in finals]
    counts: Counter = Counter()
    rejects: list[dict] = []
    truncated: list[str] = []
    errors: dict[str, str] = {}
    failed: dict[str, str] = {}
    uniques: dict[str, list[pa.Array]] = {c: [] for c in _UNIQUE_COLUMNS.values()}
    workers = max(1, min(cfg.workers, len(files)))
    try:
        if not files:
            pq.write_table(MEASUREMENT_SCHEMA.empty_table(), tmps[0])
        # a thread that decompresses ahead pays off only on a core that would otherwise idle
        cfg = dataclasses.replace(cfg, prefetch=_prefetch_pays(cfg, workers))
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            args = (files, [str(t) for t in tmps[: len(files)]], [cfg] * len(files))
            results = pool.map(_parse_to_part, *args) if pool else map(_parse_to_part, *args)
            for done, part in enumerate(results, start=1):
                counts.update({k: v for k, v in part.stats.items() if k not in _UNIQUE_COLUMNS})
                for name, acc in uniques.items():
                    acc.append(part.uniques[name])
                rejects.extend(dict(r, file=Path(part.path).name) for r in part.rejects[: cfg.reject_sample])
                if part.truncated:
                    truncated.append(part.path)
                if part.error:
                    errors[part.path] = part.error
                if part.failed:
                    failed[part.path] = part.failed
                if progress:
                    progress(
                        f"parsed {done}/{len(files)} {Path(part.path).name}: {part.rows} rows"
                        + (f" ({part.error})" if part.error else "")
                    )
        finally:
            if pool:
                pool.shutdown()
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
        for stale in _stale_parts(out_path, finals):
            stale.unlink(missing_ok=True)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        clear_pool()  # the text buffers are for the files of one call, not for the life of the process
    for key, name in _UNIQUE_COLUMNS.items():
        parts = uniques[name]
        counts[key] = pc.count_distinct(pa.chunked_array(parts, MEASUREMENT_SCHEMA.field(name).type)).as_py()
    stats = {k: int(counts.get(k, 0)) for k in MANIFEST_KEYS} | {k: int(v) for k, v in counts.items()}
    seconds = time.perf_counter() - start
    return ParseSummary(
        out_path=str(out_path),
        files=len(files),
        rows=stats["rows"],
        stats=stats,
        rejects=rejects[: cfg.reject_sample],
        truncated_files=truncated,
        errors=errors,
        seconds=seconds,
        rows_per_s=stats["rows"] / seconds if seconds > 0 else 0.0,
        parts=[str(p) for p in finals],
        failed=failed,
    )

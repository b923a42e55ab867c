"""RIPE Atlas hourly ping dumps (bz2 NDJSON) to the measurement table (SPEC section 1).

Hot path: bz2 is decompressed in large blocks, the block's lines become one Arrow string array without a
copy, and DuckDB's JSON extension parses and classifies every line in SQL. Addresses are classified in
Python once per distinct string (cached), then joined back. No Python loop runs per result or per row.
"""

from __future__ import annotations

import bisect
import bz2
import functools
import ipaddress
import os
import queue
import re
import socket
import threading
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
# Keys shared with the independent manifests in shared/data/ripe-public.
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
_READ_BYTES = 1 << 20  # compressed bytes per read
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
SELECT ts, src, dst_canon AS dst, af::TINYINT AS ver, {rtt_expr} AS rtt, prb::INTEGER AS prb
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
    error: str | None = None


@dataclass
class ParseSummary:
    """Totals of a parse_files run; `stats` uses the manifest keys with distinct counts across files."""

    out_path: str
    files: int
    rows: int
    stats: dict[str, int]
    rejects: list[dict]
    truncated_files: list[str]
    errors: dict[str, str]
    seconds: float
    rows_per_s: float
    parts: list[str] = field(default_factory=list)  # the Parquet part files written, one per input file


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
        return _classify_slow(text)
    if socket.inet_ntop(socket.AF_INET, packed) != text:  # leading zeros and the like: ipaddress decides
        return _classify_slow(text)
    n = int.from_bytes(packed, "big")
    i = bisect.bisect_right(_V4_SPECIAL[0], n) - 1
    return 4, not (i >= 0 and n <= _V4_SPECIAL[1][i]), text


class _Bz2Lines:
    """Decompresses a bz2 file (possibly multi-stream) into blocks of whole lines; records damage."""

    def __init__(self, path: Path, block_bytes: int) -> None:
        self.path, self.block_bytes = path, block_bytes
        self.truncated, self.error = False, None

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        dec, started, total_in = bz2.BZ2Decompressor(), False, 0
        with open(self.path, "rb") as fh:  # a missing or unreadable file raises here: not "truncated"
            try:
                while chunk := fh.read(_READ_BYTES):
                    total_in += len(chunk)
                    while chunk:
                        started = True
                        buf += dec.decompress(chunk)
                        chunk = b""
                        if dec.eof:  # a concatenated stream (pbzip2 output) may follow this one
                            chunk, dec, started = dec.unused_data, bz2.BZ2Decompressor(), False
                    if len(buf) >= self.block_bytes and (cut := buf.rfind(b"\n") + 1):
                        with memoryview(buf) as view:  # one copy, not two (a bytearray slice copies too)
                            block = bytes(view[:cut])
                        del buf[:cut]
                        yield block
                if total_in == 0:
                    self._damaged("empty file, not a bz2 stream")
                elif started:
                    self._damaged("bz2 stream ends before its end-of-stream marker (truncated)")
            except (OSError, EOFError, ValueError) as exc:
                self._damaged(f"corrupt bz2 data after {total_in} compressed bytes ({exc})")
        # A damaged file keeps its whole lines only; its partial last line is dropped.
        keep = buf.rfind(b"\n") + 1 if self.truncated else len(buf)
        if keep:
            block = bytes(buf[:keep])
            yield block if block.endswith(b"\n") else block + b"\n"

    def _damaged(self, message: str) -> None:
        self.truncated, self.error = True, f"{self.path.name}: {message}"


_DONE = object()


def _prefetch(blocks: Iterator[bytes], depth: int = 1) -> Iterator[bytes]:
    """Run `blocks` in a thread, `depth` blocks ahead: bz2 releases the GIL, so decompression of the next block
    overlaps DuckDB's parse of this one (DuckDB releases the GIL too). Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for block in blocks:
                if not put(block):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=run, name="bz2-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _lines_table(block: bytes, first_ln: int) -> pa.Table:
    """Arrow table (ln, line) over a block of newline-ended lines, built without copying the text."""
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0], offsets[1:] = 0, ends
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    ln = np.arange(first_ln, first_ln + len(ends), dtype=np.int64)
    # from_buffers, not pa.array(numpy): the latter imports pandas on first use (a fifth of a second per worker)
    return pa.Table.from_arrays(
        [pa.Array.from_buffers(pa.int64(), len(ln), [None, pa.py_buffer(ln)]), lines], names=["ln", "line"]
    )


def _string_array(texts: Sequence[str]) -> pa.Array:
    """A string array built from buffers: pa.array(list) would import pandas on first use."""
    data = [t.encode() for t in texts]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


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
            _string_array(texts),
            pa.Array.from_buffers(
                pa.int8(), len(ver), [None, pa.py_buffer(np.array([v or 0 for v in ver], np.int8))]
            ),
            pa.Array.from_buffers(pa.int8(), len(glob), [None, pa.py_buffer(np.array(glob, np.int8))]),
            _string_array([c or "" for c in canon]),
        ],
        names=["addr", "ver", "is_global", "canon"],
    )
    con.execute(  # ver 0 marks an unparseable string: NULL version and canonical text, as before
        "INSERT INTO addrs SELECT addr, nullif(ver, 0), is_global::BOOLEAN, CASE WHEN ver <> 0 THEN canon END FROM fresh"
    )


_LINE_REASONS = ("blank_line", "bad_json", "not_object", "not_ping")  # lines that are not ping results


def _parse_block(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, cfg: ParseConfig, counts: Counter, rejects: list[dict]
) -> pa.Table:
    """Parse one block of lines into measurement rows; adds counts and rejected-line samples."""
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
    room = cfg.reject_sample - len(rejects)
    if room > 0:
        sample = con.execute(
            "SELECT reason, ln FROM res WHERE reason IS NOT NULL AND reason <> 'no_public_source' "
            "ORDER BY ln LIMIT ?",
            [room],
        ).fetchall()
        first_ln = lines.column("ln")[0].as_py() if len(lines) else 0
        for reason, ln in sample:
            text = lines.column("line")[ln - first_ln].as_py()
            rejects.append({"reason": reason, "line_no": ln + 1, "text": text.rstrip()[:_REJECT_TEXT_CHARS]})
    rows = con.sql(_ROWS_SQL.format(rtt_expr=_COLLAPSE_RTT[cfg.collapse])).to_arrow_table()
    con.unregister("lines")
    con.execute("DROP TABLE parsed; DROP TABLE res")  # free the block's memory before the next one
    table = pa.Table.from_arrays(
        [
            rows.column("ts").cast(pa.timestamp("s", tz="UTC")),
            rows.column("src").cast(pa.string()),
            rows.column("dst").cast(pa.string()),
            rows.column("ver"),
            rows.column("rtt"),
            rows.column("prb"),
        ],
        schema=MEASUREMENT_SCHEMA,
    )
    ok = con.execute("SELECT count(*) FILTER (WHERE rtt >= 0) FROM rows").fetchall()[0][0]
    counts.update({"rows": table.num_rows, "rows_ok": ok, "rows_failed": table.num_rows - ok})
    return table


def _connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on one thread: files are parallel across processes instead."""
    con = duckdb.connect(config={"threads": 1, "preserve_insertion_order": True})
    con.execute(_SETUP_SQL)
    con.execute('CREATE TEMP TABLE addrs (addr VARCHAR, ver TINYINT, "glob" BOOLEAN, canon VARCHAR)')
    return con


_UNIQUE_COLUMNS = {"probes": "prb_id", "public_sources": "src_addr", "destinations": "dst_addr"}


def _parse_stream(
    path: Path, cfg: ParseConfig, counts: Counter, rejects: list[dict], status: dict
) -> Iterator[pa.Table]:
    """Measurement tables of one dump, block by block; damage and engine errors land in `status`."""
    source = _Bz2Lines(path, cfg.block_bytes)
    try:
        con = _connect()
        try:
            first_ln = 0
            for block in _prefetch(iter(source)):
                lines = _lines_table(block, first_ln)
                del block
                first_ln += len(lines)
                yield _parse_block(con, lines, cfg, counts, rejects)
        finally:
            con.close()
    except (OSError, duckdb.Error) as exc:  # unreadable file or a parse engine failure: report, keep going
        status["error"] = f"{path.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    status["truncated"] = source.truncated
    if source.error:
        status["error"] = source.error


def _new_counts() -> Counter:
    return Counter({k: 0 for k in MANIFEST_KEYS})


def parse_file(path: str | os.PathLike, cfg: ParseConfig | None = None) -> ParsedFile:
    """Parse one hourly bz2 dump into measurement rows; damage is reported in the result, never raised."""
    cfg = cfg or ParseConfig()
    path = Path(path)
    counts, rejects, status = _new_counts(), [], {}
    tables = list(_parse_stream(path, cfg, counts, rejects, status))
    table = pa.concat_tables(tables) if tables else MEASUREMENT_SCHEMA.empty_table()
    counts.update({k: pc.count_distinct(table.column(c)).as_py() for k, c in _UNIQUE_COLUMNS.items()})
    return ParsedFile(
        str(path), table, dict(counts), rejects, status.get("truncated", False), status.get("error")
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


def _parse_to_part(path: str, part: str, cfg: ParseConfig) -> _PartResult:
    """Process-pool entry point: parse one dump and stream its rows into its own Parquet part file."""
    counts, rejects, status = _new_counts(), [], {}
    uniques: dict[str, list[pa.Array]] = {c: [] for c in _UNIQUE_COLUMNS.values()}
    with pq.ParquetWriter(part, MEASUREMENT_SCHEMA) as writer:
        for table in _parse_stream(Path(path), cfg, counts, rejects, status):
            writer.write_table(table)
            for name, acc in uniques.items():
                acc.append(pc.unique(table.column(name)))
    distinct = {
        name: pc.unique(pa.chunked_array(acc, MEASUREMENT_SCHEMA.field(name).type))
        for name, acc in uniques.items()
    }
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
    )


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


def parse_files(
    paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    cfg: ParseConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParseSummary:
    """Parse dump files in parallel processes, each writing its own Parquet part next to out_path
    (`part_paths(out_path, len(paths))`, file order kept by part number); sums counts across files.

    The run replaces its slice: once every part is written, earlier parts of the same base name are removed.
    Only counts, rejected-line samples and the distinct keys travel back from the workers."""
    cfg = cfg or ParseConfig()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    files = [str(p) for p in paths]
    finals = part_paths(out_path, len(files))
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in finals]
    counts: Counter = Counter()
    rejects: list[dict] = []
    truncated: list[str] = []
    errors: dict[str, str] = {}
    uniques: dict[str, list[pa.Array]] = {c: [] for c in _UNIQUE_COLUMNS.values()}
    workers = max(1, min(cfg.workers, len(files)))
    try:
        if not files:
            pq.write_table(MEASUREMENT_SCHEMA.empty_table(), tmps[0])
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
    )

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
WITH p AS (
  SELECT ln, line,
    CASE WHEN NOT json_valid(line) THEN CASE WHEN trim(line, ' \t\r\n') = '' THEN 'blank_line' ELSE 'bad_json' END
         WHEN NOT starts_with(line, '{{') AND NOT starts_with(ltrim(line, ' \t'), '{{') THEN 'not_object'
    END AS pre
  FROM lines
), j AS (
  SELECT ln, line, pre, CASE WHEN pre IS NULL THEN from_json(line, '{_LINE_STRUCT}') END AS j FROM p
)
SELECT *, list_filter(pk_all, lambda q: q.dup IS NULL) AS pk FROM (
SELECT ln, pre, j.type AS typ, j.af AS af_raw,
  CASE WHEN j.af IS NULL THEN 4 ELSE as_int(j.af) END AS af,  -- legacy firmware: no af means IPv4
  j.prb_id AS prb_raw, as_int(j.prb_id) AS prb, j.timestamp AS ts_raw, as_int(j.timestamp) AS ts,
  j."from" AS from_addr, j.src_addr AS src_raw, coalesce(j.dst_addr, j.addr) AS dst_raw,
  j.error IS NOT NULL AS has_error, as_int(j.rcvd) AS rcvd, TRY_CAST(j.avg AS DOUBLE) AS avg, j.avg AS avg_raw,
  CASE WHEN pre IS NULL AND j.result IS NULL THEN coalesce(json_type(line, '$.result'), 'NULL') <> 'NULL'
       ELSE false END AS bad_result,
  j.result AS pk_all
FROM j)
"""

# Stage 2: per-result classification after the address table `addrs` is known.
_CLASSIFY_SQL = """
CREATE OR REPLACE TEMP TABLE res AS
WITH a AS (
  SELECT p.*, fa.ver AS from_ver, fa.glob AS from_glob, fa.canon AS from_canon,
    sa.ver AS src_ver, sa.glob AS src_glob, sa.canon AS src_canon,
    da.ver AS dst_ver, da.glob AS dst_glob, da.canon AS dst_canon,
    coalesce(len(pk_all), 0) - coalesce(len(pk), 0) AS n_dup,
    list_transform(pk, lambda q: CASE WHEN q.rtt IS NOT NULL THEN TRY_CAST(q.rtt AS DOUBLE)
                                      WHEN q.x IS NOT NULL OR q.error IS NOT NULL THEN -1.0 END) AS pr
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
SELECT *,
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


@functools.lru_cache(maxsize=1 << 20)
def classify_address(text: str) -> tuple[int | None, bool, str | None]:
    """(IP version or None, is global unicast, canonical text) for an address string; cached per process."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, False, None
    starts, ends = _V4_SPECIAL if ip.version == 4 else _V6_SPECIAL
    n = int(ip)
    i = bisect.bisect_right(starts, n) - 1
    return ip.version, not (i >= 0 and n <= ends[i]), str(ip)


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
                        yield bytes(buf[:cut])
                        del buf[:cut]
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


def _lines_table(block: bytes, first_ln: int) -> pa.Table:
    """Arrow table (ln, line) over a block of newline-ended lines, built without copying the text."""
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    return pa.table({"ln": np.arange(first_ln, first_ln + len(ends), dtype=np.int64), "line": lines})


def _address_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Distinct address strings of the parsed block with their classification (cached per string)."""
    distinct = con.sql(
        "SELECT DISTINCT a FROM (SELECT from_addr AS a FROM parsed UNION ALL SELECT src_raw FROM parsed "
        "UNION ALL SELECT dst_raw FROM parsed) WHERE a IS NOT NULL"
    ).to_arrow_table()
    texts = distinct.column(0).to_pylist()
    ver, glob, canon = zip(*map(classify_address, texts), strict=True) if texts else ((), (), ())
    return pa.table(
        {
            "addr": pa.array(texts, pa.string()),
            "ver": pa.array(ver, pa.int8()),
            "glob": pa.array(glob, pa.bool_()),
            "canon": pa.array(canon, pa.string()),
        }
    )


_LINE_REASONS = ("blank_line", "bad_json", "not_object", "not_ping")  # lines that are not ping results


def _parse_block(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, cfg: ParseConfig, counts: Counter, rejects: list[dict]
) -> pa.Table:
    """Parse one block of lines into measurement rows; adds counts and rejected-line samples."""
    con.register("lines", lines)
    con.execute(_PARSE_SQL)
    con.register("addrs", _address_table(con))
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
    con.unregister("addrs")
    return pa.Table.from_arrays(
        [
            rows.column("ts").cast(pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            rows.column("src").cast(pa.string()),
            rows.column("dst").cast(pa.string()),
            rows.column("ver").cast(pa.int8()),
            rows.column("rtt").cast(pa.float64()),
            rows.column("prb").cast(pa.int32()),
        ],
        schema=MEASUREMENT_SCHEMA,
    )


def _connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on one thread: files are parallel across processes instead."""
    con = duckdb.connect(config={"threads": 1, "preserve_insertion_order": True})
    con.execute(_SETUP_SQL)
    return con


def _distinct_counts(table: pa.Table) -> dict[str, int]:
    """probes, public_sources and destinations of a measurement table."""
    return {
        "probes": pc.count_distinct(table.column("prb_id")).as_py(),
        "public_sources": pc.count_distinct(table.column("src_addr")).as_py(),
        "destinations": pc.count_distinct(table.column("dst_addr")).as_py(),
    }


def parse_file(path: str | os.PathLike, cfg: ParseConfig | None = None) -> ParsedFile:
    """Parse one hourly bz2 dump into measurement rows; damage is reported in the result, never raised."""
    cfg = cfg or ParseConfig()
    path = Path(path)
    counts: Counter = Counter({k: 0 for k in MANIFEST_KEYS})
    rejects: list[dict] = []
    tables: list[pa.Table] = []
    source = _Bz2Lines(path, cfg.block_bytes)
    error = None
    try:
        con = _connect()
        first_ln = 0
        for block in source:
            lines = _lines_table(block, first_ln)
            first_ln += len(lines)
            tables.append(_parse_block(con, lines, cfg, counts, rejects))
        con.close()
    except (OSError, duckdb.Error) as exc:  # unreadable file or a parse engine failure: report, keep going
        error = f"{path.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    table = pa.concat_tables(tables) if tables else MEASUREMENT_SCHEMA.empty_table()
    ok = pc.sum(pc.greater_equal(table.column("rtt"), 0.0)).as_py() or 0
    counts.update({"rows": table.num_rows, "rows_ok": ok, "rows_failed": table.num_rows - ok})
    counts.update(_distinct_counts(table))
    return ParsedFile(str(path), table, dict(counts), rejects, source.truncated, source.error or error)


def _parse_worker(path: str, cfg: ParseConfig) -> ParsedFile:
    """Process-pool entry point (module level so it pickles)."""
    return parse_file(path, cfg)


def parse_files(
    paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    cfg: ParseConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParseSummary:
    """Parse dump files in parallel processes into one Parquet file at out_path; sums counts across files."""
    cfg = cfg or ParseConfig()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    start = time.perf_counter()
    counts: Counter = Counter()
    rejects: list[dict] = []
    truncated: list[str] = []
    errors: dict[str, str] = {}
    uniques: dict[str, list[pa.Array]] = {"prb_id": [], "src_addr": [], "dst_addr": []}
    files = [str(p) for p in paths]
    workers = max(1, min(cfg.workers, len(files)))
    with pq.ParquetWriter(tmp_path, MEASUREMENT_SCHEMA) as writer:
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            results = (
                pool.map(_parse_worker, files, [cfg] * len(files))
                if pool
                else map(_parse_worker, files, [cfg] * len(files))
            )
            for done, parsed in enumerate(results, start=1):  # file order is kept in the output
                writer.write_table(parsed.table)
                counts.update(
                    {
                        k: v
                        for k, v in parsed.stats.items()
                        if k not in ("probes", "public_sources", "destinations")
                    }
                )
                for name, acc in uniques.items():
                    acc.append(pc.unique(parsed.table.column(name)))
                rejects.extend(
                    dict(r, file=Path(parsed.path).name) for r in parsed.rejects[: cfg.reject_sample]
                )
                if parsed.truncated:
                    truncated.append(parsed.path)
                if parsed.error:
                    errors[parsed.path] = parsed.error
                if progress:
                    progress(
                        f"parsed {done}/{len(files)} {Path(parsed.path).name}: {parsed.table.num_rows} rows"
                        + (f" ({parsed.error})" if parsed.error else "")
                    )
        finally:
            if pool:
                pool.shutdown()
    os.replace(tmp_path, out_path)
    for key, name in (("probes", "prb_id"), ("public_sources", "src_addr"), ("destinations", "dst_addr")):
        parts = uniques[name]
        counts[key] = pc.count_distinct(pa.chunked_array(parts)).as_py() if parts else 0
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
    )

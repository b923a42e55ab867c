"""The generic parser: any dump line, in DuckDB SQL (ingest.parse's reference for legacy and bad input).

parse_fast.py finishes the clean ping results; every line it does not take comes here, so this SQL decides
every reject reason and every legacy rule. Stage 1 (_PARSE_SQL) reads each line once as JSON; the block's new
address strings are then classified (parse_address.py) into the `addrs` table; stage 2 (_CLASSIFY_SQL) gives
each result its reject reason or none; _ROWS_SQL turns the kept results into rows.
"""

from __future__ import annotations

from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa

from pingllm_core import db
from pingllm_core.ingest.parse_address import classify_address
from pingllm_core.ingest.parse_fast import int_array, string_array

MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01; later timestamps are corrupt

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
COLLAPSE_RTT = {  # ParseConfig.collapse -> the rtt column's SQL
    "packet": "unnest(rtts)",
    "min": "coalesce(list_min(list_filter(rtts, lambda r: r >= 0)), -1.0)",
    "median": "coalesce(list_aggregate(list_filter(rtts, lambda r: r >= 0), 'median'), -1.0)",
}


def connect_parser() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on one thread: files are parallel across processes instead."""
    con = db.connect(threads=1, config={"preserve_insertion_order": True})
    con.execute(_SETUP_SQL)
    con.execute('CREATE TEMP TABLE addrs (addr VARCHAR, ver TINYINT, "glob" BOOLEAN, canon VARCHAR)')
    return con


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


LINE_REASONS = ("blank_line", "bad_json", "not_object", "not_ping")  # lines that are not ping results


def parse_generic(
    con: duckdb.DuckDBPyConnection,
    lines: pa.Table,
    collapse: str,
    max_rtt_ms: float,
    counts: Counter,
    room: int,
) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The complete parser in SQL, for any line: rows (with their line number `ln`), counts added to
    `counts`, and up to `room` rejected lines as (ln, reason). parse_fast sends it every line it does not
    take, so it decides all legacy and bad-input behaviour."""
    con.register("lines", lines)
    con.execute(_PARSE_SQL)
    _add_new_addresses(con)
    con.execute(_CLASSIFY_SQL.format(max_ts=MAX_TIMESTAMP, max_rtt=float(max_rtt_ms)))
    for reason, n, dups in con.execute(
        "SELECT reason, count(*), sum(n_dup) FROM res GROUP BY reason"
    ).fetchall():
        counts["lines"] += n
        if reason not in LINE_REASONS:
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
    rows = con.sql(_ROWS_SQL.format(rtt_expr=COLLAPSE_RTT[collapse])).to_arrow_table()
    con.unregister("lines")
    con.execute("DROP TABLE parsed; DROP TABLE res")  # free the block's memory before the next one
    return rows, sample

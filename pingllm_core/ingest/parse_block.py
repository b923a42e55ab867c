"""One block of dump lines to measurement rows, counts and rejected-line samples (ingest.parse's inner step).

The block's lines become one Arrow string array without a copy (lines that are not UTF-8 are blanked first and
counted as bad_utf8); parse_fast.py takes the clean ping results, the generic SQL parser (parse_sql.py) every
other line, and the two are merged back in line order.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pingllm_core.ingest.bz2_lines import Block, invalid_utf8_lines
from pingllm_core.ingest.parse_address import classify_address
from pingllm_core.ingest.parse_fast import AddressBook, FastBlock, int_array, np_values, parse_fast
from pingllm_core.ingest.parse_sql import COLLAPSE_RTT, MAX_TIMESTAMP, parse_generic

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
_REJECT_TEXT_CHARS = 300  # a kept rejected line is cut to this many characters


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
        if self.collapse not in COLLAPSE_RTT:
            raise ValueError(f"collapse must be one of {sorted(COLLAPSE_RTT)}, got {self.collapse!r}")
        if not self.max_rtt_ms > 0:
            raise ValueError("max_rtt_ms must be positive")
        if self.reject_sample < 0 or self.workers < 1 or self.block_bytes < 1024:
            raise ValueError("reject_sample >= 0, workers >= 1 and block_bytes >= 1024 are required")


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


def parse_block(
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
            max_ts=MAX_TIMESTAMP,
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
        slow_rows, slow_sample = parse_generic(
            con, lines.take(int_array(fast.slow)), cfg.collapse, cfg.max_rtt_ms, counts, room
        )
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

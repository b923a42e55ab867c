"""Fast path of the dump parser (parse.py): one typed JSON read per line, then numpy.

Most lines of a dump are clean ping results of current firmware. For those, DuckDB reads the few keys the
measurement table needs with their final types (packet RTTs as DOUBLE, so no number is turned into text and
back), and everything after that (packet filtering, the SPEC source-address rule, rows) is vectorised numpy
over the Arrow result. Nothing runs per row in Python.

A line takes the fast path only when its typed read provably gives what the generic parser in parse.py gives
(valid JSON object, `type` absent or "ping", `af`/`prb_id`/`timestamp` in range, `dst_addr` present, at least
one non-duplicate packet, every packet usable and in range), so it can only end up as rows or as one of the
address rejects. Every other line (legacy firmware, garbage, rejects of any other reason, and the rare lines
where a typed DOUBLE could differ from the generic text-then-cast read) goes back to the generic parser,
which therefore decides all bad-input behaviour exactly as before.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The keys a clean modern result needs, with the types they end up as: no number becomes text and back.
FAST_STRUCT = (
    '{"type":"VARCHAR","af":"DOUBLE","prb_id":"DOUBLE","timestamp":"DOUBLE","from":"VARCHAR",'
    '"src_addr":"VARCHAR","dst_addr":"VARCHAR","result":[{"rtt":"DOUBLE","x":"VARCHAR","error":"VARCHAR",'
    '"dup":"VARCHAR"}]}'
)

# A typed read agrees with the generic text-then-as_int() read of af, prb_id and timestamp whenever it gives an
# integral number in range, except that it reads JSON true/false as 1/0: a prb_id or timestamp of 0 or 1 is
# flagged (bool01) for a look at the line text. A missing or non-numeric af reads NULL here and goes to the
# generic path (which tells "missing: IPv4" from "wrong type").
_FAST_SQL = """
SELECT coalesce(j IS NOT NULL AND starts_with(line, '{{') AND (j.type IS NULL OR j.type = 'ping')
                AND j.dst_addr IS NOT NULL AND j.af IN (4, 6)
                AND j.prb_id = floor(j.prb_id) AND j.prb_id BETWEEN 0 AND 2147483647
                AND j.timestamp = floor(j.timestamp) AND j.timestamp BETWEEN 1 AND {max_ts}, false) AS ok,
  coalesce(j.prb_id IN (0, 1) OR j.timestamp = 1, false) AS bool01,
  TRY_CAST(j.af AS TINYINT) AS af, TRY_CAST(j.prb_id AS INTEGER) AS prb, TRY_CAST(j.timestamp AS BIGINT) AS ts,
  j."from" AS frm, j.src_addr AS src, j.dst_addr AS dst, j.result AS pk
FROM (SELECT line, {read} AS j FROM lines)
"""


def _fast_table(con: duckdb.DuckDBPyConnection, max_ts: int) -> pa.Table:
    """The typed read of the registered `lines`. Without TRY() it is cheaper, but one line of invalid JSON
    fails the statement: then the block is read again with TRY(), which gives NULL for such lines."""
    read = f"from_json(line, '{FAST_STRUCT}')"
    try:
        return con.sql(_FAST_SQL.format(max_ts=int(max_ts), read=read)).to_arrow_table()
    except duckdb.InvalidInputException:
        return con.sql(_FAST_SQL.format(max_ts=int(max_ts), read=f"TRY({read})")).to_arrow_table()


# Reason codes of fast lines, in the generic path's order of precedence.
_OK, _NO_SOURCE, _BAD_ADDRESS, _DST_NOT_GLOBAL = 0, 1, 2, 3
_REASONS = {_NO_SOURCE: "no_public_source", _BAD_ADDRESS: "bad_address", _DST_NOT_GLOBAL: "dst_not_global"}


@dataclass
class FastBlock:
    """What the fast path made of one block."""

    slow: np.ndarray  # block-relative indices of the lines the generic parser must handle, ascending
    row_line: np.ndarray  # block-relative line index of every output row (ascending)
    columns: dict[str, pa.Array | np.ndarray]  # ts, src, dst, ver, rtt, prb: one value per row
    counts: Counter  # lines, results, results_used, packets_dup_skipped, results_no_public_source, rejected_*
    rejects: list[tuple[int, str]]  # (block-relative line index, reason) of sampled rejects, ascending
    # prb_id, src_addr and dst_addr values of the rows, with few duplicates (for the distinct counts)
    keys: dict[str, pa.Array]

    @classmethod
    def everything_slow(cls, n_lines: int) -> FastBlock:
        """No line taken: all of them go to the generic parser."""
        columns = {
            "ts": np.zeros(0, np.int64),
            "src": string_array([]).cast(pa.string()),
            "dst": string_array([]).cast(pa.string()),
            "ver": np.zeros(0, np.int8),
            "rtt": np.zeros(0, np.float64),
            "prb": np.zeros(0, np.int32),
        }
        keys = {
            "prb_id": int_array(np.zeros(0, np.int32)),
            "src_addr": columns["src"],
            "dst_addr": columns["dst"],
        }
        return cls(np.arange(n_lines, dtype=np.int64), np.zeros(0, np.int64), columns, Counter(), [], keys)


def _seg_sum(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-list sum of a per-item array, lists given by Arrow offsets (empty lists give 0)."""
    cs = np.zeros(len(flags) + 1, np.int64)
    np.cumsum(flags, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """Booleans of an Arrow bitmap (LSB first)."""
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=offset + n, bitorder="little")
    return bits[offset:].view(bool)


def _valid(arr: pa.Array) -> np.ndarray:
    """Validity of an Arrow array as numpy booleans."""
    if not arr.null_count:
        return np.ones(len(arr), bool)
    return _bits(arr.buffers()[0], arr.offset, len(arr))


_DTYPES = {
    t.id: np.dtype(d)
    for t, d in [
        (pa.int8(), np.int8),
        (pa.int16(), np.int16),
        (pa.int32(), np.int32),
        (pa.int64(), np.int64),
        (pa.float64(), np.float64),
    ]
}


def np_values(arr: pa.Array, fill: float | bool = 0) -> np.ndarray:
    """numpy values of a primitive or boolean Arrow array, nulls replaced by `fill`. Reads the buffers
    directly: to_numpy() on arrays with nulls or on booleans imports pandas (a fifth of a second)."""
    if pa.types.is_boolean(arr.type):
        values = _bits(arr.buffers()[1], arr.offset, len(arr))
    else:
        dtype = _DTYPES[arr.type.id]
        values = np.frombuffer(arr.buffers()[1], dtype)[arr.offset : arr.offset + len(arr)]
    return np.where(_valid(arr), values, fill) if arr.null_count else values


def int_array(values: np.ndarray, type: pa.DataType | None = None) -> pa.Array:  # noqa: A002
    """An Arrow array over a numpy number array without a copy (pa.array(numpy) imports pandas)."""
    values = np.ascontiguousarray(values)
    type = type or pa.from_numpy_dtype(values.dtype)  # noqa: A001
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(values)])


def string_array(texts: list[str]) -> pa.Array:
    """A string array built from buffers (pa.array(list) imports pandas on first use)."""
    data = [t.encode() for t in texts]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


def _bool_array(mask: np.ndarray) -> pa.Array:
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


class AddressBook:
    """Address strings already classified, with their version, global flag and canonical text, as Arrow and
    numpy arrays so a block's addresses are looked up by a hash join in C++ instead of a Python call each.
    Index -1 (a null address) reads the sentinel last entry of `ver` and `glob`. Thread-safe."""

    def __init__(self, classify: Callable[[str], tuple[int | None, bool, str | None]], limit: int = 1 << 21):
        self._classify, self._limit, self._lock = classify, limit, threading.Lock()
        self._clear()

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by another thread at the fork)."""
        self._lock = threading.Lock()

    def _clear(self) -> None:
        self.names = string_array([]).cast(pa.string())
        self.canon = self.names
        self.ver, self.glob = np.zeros(1, np.int8), np.zeros(1, bool)

    @contextlib.contextmanager
    def session(self) -> Iterator[AddressBook]:
        """Hold the book for one block: indices from index() stay valid until the end (the book only grows
        inside a session; a book past its limit starts over at the next one)."""
        with self._lock:
            if len(self.names) > self._limit:
                self._clear()
            yield self

    def index(self, texts: pa.Array) -> np.ndarray:
        """Index of every string in the book (-1 for null), classifying and adding new ones; in a session."""
        texts = texts.cast(pa.string())
        found = np_values(pc.index_in(texts, value_set=self.names), -1).astype(np.int64)
        missing = _valid(texts) & (found < 0)
        if missing.any():
            new = texts.filter(_bool_array(missing))
            fresh = pc.unique(new)
            info = [self._classify(a) for a in fresh.to_pylist()]
            base = len(self.names)
            self.names = pa.concat_arrays([self.names, fresh])
            canon = [c if c is not None else a for a, (_, _, c) in zip(fresh.to_pylist(), info, strict=True)]
            self.canon = pa.concat_arrays([self.canon, string_array(canon).cast(pa.string())])
            ver = np.array([v or 0 for v, _, _ in info], np.int8)
            glob = np.array([g for _, g, _ in info], bool)
            self.ver = np.concatenate([self.ver[:-1], ver, [0]]).astype(np.int8)
            self.glob = np.concatenate([self.glob[:-1], glob, [False]])
            found[missing] = np_values(pc.index_in(new, value_set=fresh)).astype(np.int64) + base
        return found


def _text_agrees(
    block: bytes | mmap.mmap,
    ends: np.ndarray,
    lines: np.ndarray,
    n_rtt: np.ndarray,
    timeout: np.ndarray,
    maybe_bool: np.ndarray,
) -> np.ndarray:
    """Settle, from the line text, the two things a typed read cannot see, for the few lines where they matter:

    - a 0 or 1 (an id, a timestamp or an RTT) may have been JSON true/false, which the generic read rejects:
      fine when the line has no `true` and no `false` at all;
    - a packet with an `x` or `error` and no numeric `rtt` (a timeout, where `timeout` is set) may have had a
      non-numeric rtt (a bad packet): fine when, with no escapes in the line, every `"rtt"` in it is one of
      its `n_rtt` numeric rtt keys."""
    out = np.zeros(len(lines), bool)
    for k, i in enumerate(lines.tolist()):
        text = block[int(ends[i - 1]) if i else 0 : int(ends[i])]
        if maybe_bool[i] and (b"true" in text or b"false" in text):
            continue
        out[k] = not timeout[i] or (b"\\" not in text and text.count(b'"rtt"') == n_rtt[i])
    return out


def parse_fast(
    con: duckdb.DuckDBPyConnection,
    block: bytes | mmap.mmap,
    line_ends: np.ndarray,
    *,
    collapse: str,
    max_rtt: float,
    max_ts: int,
    book: AddressBook,
    reject_room: int,
) -> FastBlock:
    """Parse the registered `lines` table (the lines of `block`, ending at `line_ends`) on the fast path."""
    t = _fast_table(con, max_ts).combine_chunks()
    n = t.num_rows
    if not n:
        return FastBlock.everything_slow(0)
    ok = np_values(t.column("ok").chunk(0), False)
    pk = t.column("pk").chunk(0)
    offsets = np_values(pk.offsets)
    base = int(offsets[0]) if len(offsets) else 0
    offsets = (offsets - base).astype(np.int64)
    m = int(offsets[-1]) if len(offsets) else 0
    items = pk.values.slice(base, m)
    rtt, x, err, dup = items.flatten()  # children with the item (struct) nulls merged in
    rv, xe, is_dup = _valid(rtt), _valid(x) | _valid(err), _valid(dup)
    r = np_values(rtt, 0.0)
    keep = ~is_dup
    # a kept packet's value: its rtt, or -1.0 when it only has x or error (the generic CASE); else unusable
    v = np.where(rv, r, -1.0)
    usable = rv | xe
    in_range = (v == -1.0) | ((v >= 0.0) & (v <= max_rtt))  # NaN is never in range
    bad = keep & ~(usable & in_range)
    n_items = offsets[1:] - offsets[:-1]
    n_keep = _seg_sum(keep, offsets)
    fast = ok & _valid(pk) & (n_keep > 0) & (_seg_sum(bad, offsets) == 0)
    # lines the text has to confirm: a 0 or 1 that may have been true/false, or a timeout packet
    timeout = _seg_sum(keep & ~rv & xe, offsets) > 0
    maybe_bool = np_values(t.column("bool01").chunk(0), False) | (
        _seg_sum(keep & rv & ((r == 0.0) | (r == 1.0)), offsets) > 0
    )
    check = np.flatnonzero(fast & (timeout | maybe_bool))
    if len(check):
        fast[check] = _text_agrees(block, line_ends, check, _seg_sum(rv, offsets), timeout, maybe_bool)

    # the SPEC source rule and destination checks, looked up per distinct address string; src_addr only
    # where `from` is not a global address of the result's family
    af = np_values(t.column("af").chunk(0), 0).astype(np.int8)
    with book.session():
        fi, di = book.index(t.column("frm").chunk(0)), book.index(t.column("dst").chunk(0))
        from_ok = (book.ver[fi] == af) & book.glob[fi]
        need = fast & ~from_ok
        si = np.full(n, -1, np.int64)
        if need.any():
            si[need] = book.index(t.column("src").chunk(0).filter(_bool_array(need)))
        ver, glob, canon = book.ver, book.glob, book.canon
    src_ok = (ver[si] == af) & glob[si]
    src_idx = np.where(from_ok, fi, np.where(src_ok, si, -1))
    reason = np.full(n, _OK, np.int8)
    dst_ng = ~glob[di]
    reason[dst_ng] = _DST_NOT_GLOBAL
    reason[ver[di] != af] = _BAD_ADDRESS
    reason[src_idx < 0] = _NO_SOURCE
    used = fast & (reason == _OK)

    counts: Counter = Counter()
    n_fast = int(fast.sum())
    counts["lines"] = counts["results"] = n_fast
    counts["results_used"] = int(used.sum())
    counts["packets_dup_skipped"] = int((n_items - n_keep)[used].sum())
    fast_reason = reason[fast]
    counts["results_no_public_source"] = int((fast_reason == _NO_SOURCE).sum())
    for code in (_BAD_ADDRESS, _DST_NOT_GLOBAL):
        if k := int((fast_reason == code).sum()):
            counts[f"rejected_{_REASONS[code]}"] = k
    rejects: list[tuple[int, str]] = []
    if reject_room > 0:
        sampled = np.flatnonzero(fast & (reason >= _BAD_ADDRESS))[:reject_room]
        rejects = [(int(i), _REASONS[int(reason[i])]) for i in sampled]

    line_of_item = np.repeat(np.arange(n, dtype=np.int64), n_items)
    if collapse == "packet":
        row_item = np.flatnonzero(keep & used[line_of_item])
        row_line = line_of_item[row_item]
        rtt_out = v[row_item]
    else:
        row_line = np.flatnonzero(used)
        rtt_out = _collapse(v, keep & used[line_of_item] & (v >= 0.0), line_of_item, row_line, collapse)
    ts = np_values(t.column("ts").chunk(0), 0)
    prb = np_values(t.column("prb").chunk(0), 0).astype(np.int32)
    columns = {
        "ts": ts[row_line],
        "src": canon.take(int_array(src_idx[row_line])),
        "dst": canon.take(int_array(di[row_line])),
        "ver": af[row_line],
        "rtt": rtt_out,
        "prb": prb[row_line],
    }
    seen = np.zeros(len(canon), bool)  # distinct keys of the rows: from the used lines, no hashing of rows
    seen[src_idx[used]] = True
    src_keys = canon.filter(_bool_array(seen))
    seen[:] = False
    seen[di[used]] = True
    keys = {
        "prb_id": pc.unique(int_array(prb[used])),
        "src_addr": src_keys,
        "dst_addr": canon.filter(_bool_array(seen)),
    }
    return FastBlock(np.flatnonzero(~fast), row_line, columns, counts, rejects, keys)


def _collapse(
    v: np.ndarray, good: np.ndarray, line_of_item: np.ndarray, lines: np.ndarray, how: str
) -> np.ndarray:
    """One RTT per used line: min or median of its non-negative packet RTTs, -1.0 when it has none (the
    generic path's list_min / list_aggregate 'median')."""
    out = np.full(len(lines), -1.0)
    if not len(lines):
        return out
    pos = np.full(int(line_of_item.max(initial=-1)) + 2, -1, np.int64)
    pos[lines] = np.arange(len(lines))
    item_row = pos[line_of_item[good]]  # row of every good packet, ascending
    vals = v[good]
    order = np.lexsort((vals, item_row))
    vals, item_row = vals[order], item_row[order]
    cnt = np.bincount(item_row, minlength=len(lines))
    has = cnt > 0
    start = np.concatenate(([0], np.cumsum(cnt)[:-1]))
    if how == "min":
        out[has] = vals[start[has]]
    else:
        lo = vals[start[has] + (cnt[has] - 1) // 2]
        hi = vals[start[has] + cnt[has] // 2]
        out[has] = lo * 0.5 + hi * 0.5  # DuckDB's lo * (1 - d) + hi * d at d = 0.5, bit for bit
    return out

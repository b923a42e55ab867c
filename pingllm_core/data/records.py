"""Probe-centric ArrayRecord rows: one probe's measurements, columnar, in time order (SPEC section 3).

One module: the row format (header, `encode_row` / `decode_row`), the writer that groups and shards rows and
the reader (`ProbeRecordSource`, index.parquet) change together; a format change touches all three.

A row keeps every source address its probe used (IPv4 and IPv6 together, which is what makes the
"IPv6 counterpart of this IPv4 source" query learnable), so rows are grouped by `prb_id` (`src_addr`
where the probe id is missing). Encoding is a small header plus flat little-endian arrays; decoding is
`np.frombuffer` slices only.

Row layout (all little-endian, offsets in bytes):
  header (48)        magic "PRW1", version u16, flags u16, n u32, k u32 (sources), d u32 (destination
                     dictionary size, 0 = raw destinations), pad u32, prb_id i64 (-1 = none),
                     first_ts i64, last_ts i64
  time   int64[n]    unix seconds, non-decreasing
  rtt    float32[n]  ms; -1 = failed
  src    uint8[k,16] + uint8[k] family (1 = IPv6), then src_index uint8|uint16[n]
  dst    raw:  uint8[n,16] + uint8[n] family
         dict: uint8[d,16] + uint8[d] family, then dst_index uint8|uint16|uint32[n]
"""

from __future__ import annotations

import shutil
import struct
import time as time_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grain
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordWriter

from pingllm_core import db
from pingllm_core.data import tokens

MAGIC = b"PRW1"
VERSION = 1
FLAG_DST_DICT = 1  # destinations stored as a per-row dictionary + index
_HEADER = struct.Struct("<4sHHIIIIqqq")  # 48 bytes, so the int64 time array starts 8-aligned
HEADER_BYTES = _HEADER.size
# Upper bound of bytes per measurement: time 8 + rtt 4 + src index 2 + raw destination 17.
_MAX_BYTES_PER_MEAS = 8 + 4 + 2 + 17
_SHARD_NAME = "probes-{:05d}-of-{:05d}.array_record"
INDEX_FILE = "index.parquet"


@dataclass(frozen=True)
class RecordsConfig:
    """How a split Parquet file becomes probe rows."""

    max_row_bytes: int = 8 * 1024 * 1024  # a probe is split into several rows above this (bytes)
    shards: int = 8  # ArrayRecord files; capped at the number of probes
    batch_rows: int = 1_000_000  # measurements per Arrow batch streamed out of DuckDB (bounds memory)
    duckdb_threads: int = 0  # 0 = DuckDB's default (all cores)
    duckdb_memory_limit: str = ""  # e.g. "4GB"; "" = DuckDB's default; the sort spills to disk above it

    def __post_init__(self) -> None:
        if self.max_row_bytes < HEADER_BYTES + 17 + _MAX_BYTES_PER_MEAS:
            raise ValueError(f"max_row_bytes too small to hold one measurement: {self.max_row_bytes}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {self.batch_rows}")


@dataclass
class RecordsSummary:
    """What `write_probe_records` wrote."""

    rows: int
    measurements: int
    probes: int
    shards: int
    bytes: int
    seconds: float


def _index_dtype(size: int) -> np.dtype:
    """Smallest unsigned dtype that indexes a table of `size` entries."""
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


@dataclass
class ProbeRow:
    """One decoded row: a probe's measurements in time order, columnar (arrays are read-only views)."""

    prb_id: int  # -1 when the probe id was missing (row grouped by source address)
    first_ts: int  # unix seconds
    last_ts: int  # unix seconds
    time: np.ndarray  # int64[n] unix seconds
    rtt: np.ndarray  # float32[n] ms, -1 failed
    src_table: np.ndarray  # uint8[k,16] distinct source addresses of this row
    src_table_v6: np.ndarray  # bool[k]
    src_index: np.ndarray  # uint8|uint16[n] into src_table
    dst_table: np.ndarray  # uint8[d,16] (dictionary) or uint8[n,16] (raw)
    dst_table_v6: np.ndarray  # bool[d] or bool[n]
    dst_index: np.ndarray | None  # uint[n] into dst_table; None for raw destinations

    @property
    def n(self) -> int:
        """Number of measurements in the row."""
        return int(self.time.shape[0])

    def dst_rows(self, idx: np.ndarray) -> np.ndarray:
        """Positions in dst_table of measurements `idx`."""
        return idx if self.dst_index is None else self.dst_index[idx]

    def measurements(self, idx: np.ndarray | None = None) -> tokens.Measurements:
        """The row (or the measurements at positions `idx`) as token-codec Measurements."""
        if idx is None:
            idx = np.arange(self.n)
        s = self.src_index[idx]
        d = self.dst_rows(idx)
        return tokens.Measurements(
            time=self.time[idx].astype(np.int64),
            src=self.src_table[s],
            src_v6=self.src_table_v6[s],
            dst=self.dst_table[d],
            dst_v6=self.dst_table_v6[d],
            rtt=self.rtt[idx].astype(np.float64),
        )


def _unique_addrs(addr: np.ndarray, v6: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (16 bytes, family) pairs in byte order and the inverse index; numeric sorts, no void sort."""
    a = np.ascontiguousarray(addr, np.uint8)
    hi, lo = a[:, :8].view(">u8")[:, 0], a[:, 8:].view(">u8")[:, 0]
    fam = np.asarray(v6, np.uint8)
    order = np.lexsort((fam, lo, hi))
    h, lo_s, f = hi[order], lo[order], fam[order]
    new = np.ones(len(order), bool)
    new[1:] = (h[1:] != h[:-1]) | (lo_s[1:] != lo_s[:-1]) | (f[1:] != f[:-1])
    inverse = np.empty(len(order), np.int64)
    inverse[order] = np.cumsum(new) - 1
    first = order[new]
    return a[first], fam[first], inverse


def encode_row(
    prb_id: int,
    time: np.ndarray,
    src: np.ndarray,
    src_v6: np.ndarray,
    dst: np.ndarray,
    dst_v6: np.ndarray,
    rtt: np.ndarray,
) -> bytes:
    """Encode one probe row (arrays of n measurements, already in time order) to bytes."""
    n = int(time.shape[0])
    if n == 0:
        raise ValueError("a row needs at least one measurement")
    time = np.ascontiguousarray(time, dtype="<i8")
    # A source is its 16 bytes plus family, so "1.2.3.4" and its v6 twin never collide.
    src_tab, src_fam, src_idx = _unique_addrs(src, src_v6)
    k = src_tab.shape[0]
    if k > 1 << 16:
        raise ValueError(f"a row holds at most 65536 distinct sources, got {k}")
    dst_tab, dst_fam, dst_idx = _unique_addrs(dst, dst_v6)
    d = dst_tab.shape[0]
    # Pick the smaller destination layout: a dictionary pays d*17 + n*width, raw pays n*17.
    use_dict = d * 17 + n * _index_dtype(d).itemsize < n * 17
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        FLAG_DST_DICT if use_dict else 0,
        n,
        k,
        d if use_dict else 0,
        0,
        int(prb_id),
        int(time[0]),
        int(time[-1]),
    )
    parts = [
        header,
        time.tobytes(),
        np.asarray(rtt, dtype="<f4").tobytes(),
        src_tab.tobytes(),
        src_fam.tobytes(),
        src_idx.astype(_index_dtype(k).newbyteorder("<")).tobytes(),
    ]
    if use_dict:
        parts += [
            dst_tab.tobytes(),
            dst_fam.tobytes(),
            dst_idx.astype(_index_dtype(d).newbyteorder("<")).tobytes(),
        ]
    else:
        parts += [np.ascontiguousarray(dst, np.uint8).tobytes(), np.asarray(dst_v6, np.uint8).tobytes()]
    return b"".join(parts)


def decode_row(b: bytes) -> ProbeRow:
    """Decode bytes from `encode_row` into a ProbeRow (np.frombuffer views, no per-measurement loop)."""
    magic, version, flags, n, k, d, _, prb_id, first_ts, last_ts = _HEADER.unpack_from(b, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a probe row: magic {magic!r} version {version}")
    off = HEADER_BYTES

    def take(dtype: str | np.dtype, count: int) -> np.ndarray:
        nonlocal off
        arr = np.frombuffer(b, dtype=dtype, count=count, offset=off)
        off += arr.nbytes
        return arr

    time = take("<i8", n)
    rtt = take("<f4", n)
    src_table = take(np.uint8, 16 * k).reshape(k, 16)
    src_v6 = take(np.uint8, k).view(np.bool_)
    src_index = take(_index_dtype(k).newbyteorder("<"), n)
    if flags & FLAG_DST_DICT:
        dst_table = take(np.uint8, 16 * d).reshape(d, 16)
        dst_v6 = take(np.uint8, d).view(np.bool_)
        dst_index = take(_index_dtype(d).newbyteorder("<"), n)
    else:
        dst_table = take(np.uint8, 16 * n).reshape(n, 16)
        dst_v6 = take(np.uint8, n).view(np.bool_)
        dst_index = None
    if off != len(b):
        raise ValueError(f"probe row has {len(b) - off} trailing bytes")
    return ProbeRow(
        prb_id, first_ts, last_ts, time, rtt, src_table, src_v6, src_index, dst_table, dst_v6, dst_index
    )


# ---------------------------------------------------------------------------------------------- writing

_QUERY = """
SELECT prb_id, src_addr, dst_addr, epoch_ms(event_time) // 1000 AS t, rtt
FROM read_parquet(?)
ORDER BY prb_id NULLS LAST, CASE WHEN prb_id IS NULL THEN src_addr END, t, dst_addr, src_addr, rtt
"""
_KEY_QUERY = "SELECT count(*) FROM (SELECT DISTINCT prb_id, CASE WHEN prb_id IS NULL THEN src_addr END FROM read_parquet(?))"


def _addr_column(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """String addresses to (uint8[n,16], bool[n]), parsing each distinct address once."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    uniq_bytes, uniq_v6 = tokens.ip_to_bytes(enc.dictionary.to_pylist())
    idx = enc.indices.to_numpy(zero_copy_only=False)
    return np.asarray(uniq_bytes, np.uint8)[idx], np.asarray(uniq_v6, bool)[idx]


def _group_starts(tab: pa.Table) -> np.ndarray:
    """Start offsets of probe groups in a sorted table, plus len(tab) at the end."""
    n = tab.num_rows
    prb = tab.column("prb_id")
    prb_valid = pc.is_valid(prb).to_numpy(zero_copy_only=False)
    prb_val = pc.fill_null(prb, -1).to_numpy().astype(np.int64)
    src = tab.column("src_addr")
    if n <= 1:
        return np.array([0, n], dtype=np.int64)
    diff_prb = (prb_val[1:] != prb_val[:-1]) | (prb_valid[1:] != prb_valid[:-1])
    diff_src = pc.not_equal(src.slice(1), src.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    # Rows without a probe id group by source address.
    change = diff_prb | (~prb_valid[1:] & diff_src)
    return np.concatenate([[0], np.flatnonzero(change) + 1, [n]]).astype(np.int64)


def _stream_groups(
    con: duckdb.DuckDBPyConnection, split_parquet: Path, batch_rows: int, max_n: int
) -> Iterator[pa.Table]:
    """Yield chunks of at most max_n measurements, each within one probe, in (probe, time) order."""
    reader = con.sql(_QUERY, params=[str(split_parquet)]).to_arrow_reader(batch_rows)
    carry: pa.Table | None = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        tab = pa.Table.from_batches([batch])
        tab = tab if carry is None else pa.concat_tables([carry, tab]).combine_chunks()
        starts = _group_starts(tab)
        # All groups but the last are complete; the last may continue in the next batch.
        for g in range(len(starts) - 2):
            for a, b in _chunks(starts[g], starts[g + 1], max_n):
                yield tab.slice(a, b - a)
        last0 = int(starts[-2])
        # Emit whole max_n pieces of a long open group now so memory stays bounded; pieces fall on the
        # same multiples of max_n as if the whole probe had been read at once.
        full = (tab.num_rows - last0) // max_n
        for i in range(full):
            yield tab.slice(last0 + i * max_n, max_n)
        carry = tab.slice(last0 + full * max_n)
        if carry.num_rows == 0:
            carry = None
    if carry is not None:
        yield carry


def _chunks(a: int, b: int, max_n: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) pieces of [a, b) of at most max_n measurements."""
    return [(s, min(s + max_n, b)) for s in range(int(a), int(b), max_n)]


def _encode_chunk(chunk: pa.Table, max_row_bytes: int) -> list[tuple[bytes, dict]]:
    """Encode one chunk, halving it until each row fits max_row_bytes; returns (row bytes, metadata)."""
    src, src_v6 = _addr_column(chunk.column("src_addr"))
    dst, dst_v6 = _addr_column(chunk.column("dst_addr"))
    t = chunk.column("t").to_numpy().astype(np.int64)
    rtt = chunk.column("rtt").to_numpy().astype(np.float64)
    prb = chunk.column("prb_id")[0].as_py()
    prb_id = -1 if prb is None else int(prb)
    out: list[tuple[bytes, dict]] = []
    pending = [(0, chunk.num_rows)]
    while pending:
        a, b = pending.pop(0)
        row = encode_row(prb_id, t[a:b], src[a:b], src_v6[a:b], dst[a:b], dst_v6[a:b], rtt[a:b])
        if len(row) > max_row_bytes and b - a > 1:
            # Many distinct sources can exceed the per-measurement bound: split in half, keep order.
            mid = (a + b) // 2
            pending[:0] = [(a, mid), (mid, b)]
            continue
        n_v6 = int(dst_v6[a:b].sum())
        meta = {
            "prb_id": prb,
            "n": b - a,
            "first_ts": int(t[a]),
            "last_ts": int(t[b - 1]),
            "n_v4": b - a - n_v6,
            "n_v6": n_v6,
            "bytes": len(row),
        }
        out.append((row, meta))
    return out


def _max_meas_per_row(max_row_bytes: int) -> int:
    """Measurements per row under the byte bound, assuming up to 16 distinct sources (checked later)."""
    return max(1, (max_row_bytes - HEADER_BYTES - 16 * 17) // _MAX_BYTES_PER_MEAS)


def write_probe_records(
    split_parquet: str | Path,
    out_dir: str | Path,
    cfg: RecordsConfig = RecordsConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    progress: Callable[[str], None] | None = None,
) -> RecordsSummary:
    """Group a split by probe, write sharded ArrayRecord rows and index.parquet; replaces out_dir atomically."""
    t0 = time_mod.perf_counter()
    split_parquet, out_dir = Path(split_parquet), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    con = db.connect(threads=cfg.duckdb_threads, memory_limit=cfg.duckdb_memory_limit)
    n_keys = int(con.sql(_KEY_QUERY, params=[str(split_parquet)]).fetchall()[0][0])
    n_shards = max(1, min(cfg.shards, n_keys))
    writers = [
        ArrayRecordWriter(str(tmp / _SHARD_NAME.format(s, n_shards)), "group_size:1") for s in range(n_shards)
    ]
    metas: list[dict] = []
    measurements = total_bytes = 0
    try:
        max_n = _max_meas_per_row(cfg.max_row_bytes)
        for chunk in _stream_groups(con, split_parquet, cfg.batch_rows, max_n):
            for row, meta in _encode_chunk(chunk, cfg.max_row_bytes):
                r = len(metas)
                # Round-robin keeps shards balanced; sizes are known at the end for the global index.
                writers[r % n_shards].write(row)
                metas.append({"shard": r % n_shards, "index_in_shard": r // n_shards, **meta})
                measurements += meta["n"]
                total_bytes += meta["bytes"]
            if progress and len(metas) and len(metas) % 10_000 == 0:
                progress(f"records: {len(metas)} rows, {measurements} measurements")
    finally:
        for w in writers:
            w.close()
        con.close()
    _write_index(tmp / INDEX_FILE, metas, n_shards)
    old = out_dir.parent / f".{out_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    summary = RecordsSummary(
        rows=len(metas),
        measurements=measurements,
        probes=n_keys,
        shards=n_shards,
        bytes=total_bytes,
        seconds=time_mod.perf_counter() - t0,
    )
    if progress:
        progress(f"records: done {summary}")
    return summary


def _write_index(path: Path, metas: list[dict], n_shards: int) -> None:
    """index.parquet: one line per row, `row` being its position in ProbeRecordSource (shard-major)."""
    shard = np.array([m["shard"] for m in metas], dtype=np.int32)
    in_shard = np.array([m["index_in_shard"] for m in metas], dtype=np.int64)
    sizes = np.bincount(shard, minlength=n_shards) if len(metas) else np.zeros(n_shards, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    table = pa.table(
        {
            "row": pa.array(offsets[shard] + in_shard if len(metas) else in_shard, pa.int64()),
            "shard": pa.array(shard, pa.int32()),
            "index_in_shard": pa.array(in_shard, pa.int64()),
            "prb_id": pa.array([m["prb_id"] for m in metas], pa.int32()),
            "n": pa.array([m["n"] for m in metas], pa.int64()),
            "first_ts": pa.array([m["first_ts"] for m in metas], pa.int64()),
            "last_ts": pa.array([m["last_ts"] for m in metas], pa.int64()),
            "n_v4": pa.array([m["n_v4"] for m in metas], pa.int64()),
            "n_v6": pa.array([m["n_v6"] for m in metas], pa.int64()),
            "bytes": pa.array([m["bytes"] for m in metas], pa.int64()),
        }
    )
    pq.write_table(table.sort_by("row"), path)


def shard_paths(records_dir: str | Path) -> list[Path]:
    """The ArrayRecord shard files of a records folder, in row order."""
    paths = sorted(Path(records_dir).glob("probes-*-of-*.array_record"))
    if not paths:
        raise FileNotFoundError(f"no probe shards in {records_dir}")
    return paths


def read_index(records_dir: str | Path) -> pa.Table:
    """The row index (index.parquet) of a records folder."""
    return pq.read_table(Path(records_dir) / INDEX_FILE)


class ProbeRecordSource:
    """Grain random-access source of decoded ProbeRows over a records folder's shards."""

    def __init__(self, records_dir: str | Path):
        self._dir = str(records_dir)
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in shard_paths(records_dir)])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> ProbeRow:
        return decode_row(self._source[index])

    def __repr__(self) -> str:
        return f"ProbeRecordSource({self._dir!r}, rows={len(self)})"

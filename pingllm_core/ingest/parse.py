"""RIPE Atlas hourly ping dumps (bz2 NDJSON) to the measurement table (SPEC section 1): files to Parquet parts.

Hot path: bz2 is decompressed (bz2_lines.py) into a few reused buffers, each block of whole lines becomes
one Arrow string array without a copy, and parse_fast.py reads every line once with a typed DuckDB JSON read
and finishes the clean ping results (nearly all lines) in numpy. Every other line (legacy firmware, garbage,
most rejects) goes to the generic SQL parser (parse_sql.py), which defines the behaviour on bad input; tests
hold the two paths to identical output. Addresses are classified in Python once per distinct string (cached,
parse_address.py). No Python loop runs per result or per row. parse_block.py parses one block of lines;
this module drives whole files: damage and failures per file, the fast bz2 decoder's fallback, one Parquet
part per file in parallel processes. ParseConfig and MEASUREMENT_SCHEMA live in parse_block.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pingllm_core.ingest.bz2_lines import (
    Bz2Lines,
    FastBz2Lines,
    FastDecodeFailed,
    clear_pool,
    fast_decoder_available,
    prefetch,
)
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA, ParseConfig, parse_block
from pingllm_core.ingest.parse_sql import connect_parser

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
        with contextlib.closing(connect_parser()) as con:
            for decoder in decoders:
                source = decoder(path, cfg.block_bytes)
                first_ln = 0
                try:
                    for block in prefetch(iter(source)) if _prefetch_pays(cfg, 1) else source:
                        try:
                            table, n_lines, keys = parse_block(con, block, first_ln, cfg, counts, rejects)
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

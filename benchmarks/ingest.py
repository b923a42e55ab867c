"""Ingest benchmark: parse-to-Parquet throughput against raw `bzip2 -dc` on the same files, same run.

    python benchmarks/ingest.py                  # 1M generated results in 4 hourly files
    python benchmarks/ingest.py --results 200000 # smaller
    python benchmarks/ingest.py --file a.bz2 --file b.bz2
    python benchmarks/ingest.py --data-dir /tmp/dumps  # generate once, reuse on later runs

Target (SPEC/brief): pipeline >= 0.8x the raw decompression rate per core.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pingllm_core.parse import ParseConfig, parse_files  # noqa: E402

# One realistic RIPE Atlas ping result per row, built in SQL (vectorised): 3 packets, ~20% IPv6, ~30% of
# probes behind NAT (private src_addr), ~3% lost packets, RTTs with 6 decimals like firmware 5080.
_GEN_SQL = """
WITH b AS (
  SELECT i, {t0} + (i * 3600 // {n}) AS ts, (hash(i, {seed}) % 20000)::BIGINT AS prb,
         hash(i, {seed} + 1) % 100 < 20 AS v6, (hash(i, {seed} + 2) % 500)::BIGINT AS d,
         5 + (hash(i, {seed} + 3) % 300000) / 1000.0 AS base
  FROM range({n}) t(i)
), a AS (
  SELECT *,
    CASE WHEN v6 THEN printf('2a02:%x:%x::%x', 4096 + prb // 256, prb % 256, prb % 7 + 1)
         ELSE printf('%d.%d.%d.%d', 80 + prb // 65536 % 100, prb // 256 % 256, prb % 256, 1 + prb % 250) END AS frm,
    CASE WHEN v6 THEN printf('2001:%x:%x::%x', 1280 + d // 64, d % 64, d % 200 + 1)
         ELSE printf('%d.%d.%d.%d', [23, 31, 45, 52, 62, 77, 81, 91, 104, 151, 185, 195, 212][1 + d % 13],
                             20 + d % 200, d % 256, 1 + d % 250) END AS dst,
    round(base + (hash(i, 11) % 1000) / 1000.0, 6) AS r1, round(base + (hash(i, 12) % 1000) / 1000.0, 6) AS r2,
    round(base + (hash(i, 13) % 1000) / 1000.0, 6) AS r3, hash(i, 14) % 100 < 3 AS lost
  FROM b
)
SELECT '{{"fw":5080,"mver":"2.6.2","lts":' || (i % 300) || ',"dst_name":"' || dst || '","af":' ||
  (CASE WHEN v6 THEN 6 ELSE 4 END) || ',"dst_addr":"' || dst || '","src_addr":"' ||
  (CASE WHEN v6 OR prb % 10 < 7 THEN frm ELSE '192.168.' || (prb % 250) || '.' || (2 + prb % 200) END) ||
  '","proto":"ICMP","ttl":' || (40 + i % 20) || ',"size":48,"result":[{{"rtt":' || r1 || '}},' ||
  (CASE WHEN lost THEN '{{"x":"*"}}' ELSE '{{"rtt":' || r2 || '}}' END) || ',{{"rtt":' || r3 ||
  '}}],"dup":0,"rcvd":' || (CASE WHEN lost THEN 2 ELSE 3 END) || ',"sent":3,"min":' || least(r1, r2, r3) ||
  ',"max":' || greatest(r1, r2, r3) || ',"avg":' || round((r1 + r2 + r3) / 3, 10) || ',"msm_id":' ||
  (1000000 + d) || ',"prb_id":' || prb || ',"timestamp":' || ts || ',"msm_name":"Ping","from":"' || frm ||
  '","type":"ping","group_id":' || (1000000 + d) || ',"step":240,"stored_timestamp":' || (ts + 60) || '}}' || chr(10)
  AS line
FROM a ORDER BY i
"""


def generate(out_dir: Path, results: int, hours: int, seed: int = 7) -> list[Path]:
    """Write `hours` real-format hourly bz2 dumps holding `results` ping results in total."""
    day = "2024-01-01"
    t0 = 1_704_067_200  # 2024-01-01T00:00:00Z
    (out_dir / day).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    raw_paths = []
    for h in range(hours):
        n = results // hours + (1 if h < results % hours else 0)
        lines = con.sql(_GEN_SQL.format(n=n, t0=t0 + 3600 * h, seed=seed + h)).to_arrow_table().column(0)
        raw = out_dir / day / f"ping-{day}T{h:02d}00"
        with open(raw, "wb") as fh:
            for chunk in lines.chunks:
                offsets = np.frombuffer(chunk.buffers()[1], np.int32 if chunk.type == "string" else np.int64)
                start, end = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
                fh.write(memoryview(chunk.buffers()[2])[start:end])
        raw_paths.append(raw)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # bzip2 in parallel subprocesses
        list(pool.map(lambda p: subprocess.run(["bzip2", "-f", str(p)], check=True), raw_paths))
    return [p.with_name(p.name + ".bz2") for p in raw_paths]


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (bzip2, pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def raw_decompress(paths: list[Path]) -> tuple[float, int, float]:
    """Seconds for `bzip2 -dc` of every file in turn on one core, the decompressed bytes, and its CPU seconds."""
    start = time.perf_counter()
    size = 0
    for p in paths:
        out = subprocess.run(f"bzip2 -dc '{p}' | wc -c", shell=True, check=True, capture_output=True)
        size += int(out.stdout)
    # wc runs beside bzip2 but costs little; the timing below is bzip2 alone.
    start, cpu = time.perf_counter(), _cpu()
    for p in paths:
        subprocess.run(f"bzip2 -dc '{p}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - start, size, _cpu() - cpu


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=1_000_000, help="generated results (default 1M)")
    ap.add_argument("--hours", type=int, default=4, help="hourly files to split the generated dump into")
    ap.add_argument("--file", action="append", type=Path, help="use these dump files instead of generating")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data-dir", type=Path, help="generate into (or reuse the dumps already in) this folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pingllm-ingest-") as tmp:
        tmp_dir = Path(tmp)
        if args.file:
            paths = args.file
        elif args.data_dir and (found := sorted(args.data_dir.glob("*/ping-*.bz2"))):
            paths = found
            print(f"reusing {len(paths)} dump files under {args.data_dir}")
        else:
            t = time.perf_counter()
            paths = generate(args.data_dir or tmp_dir / "raw", args.results, args.hours)
            print(
                f"generated {args.results:,} results in {len(paths)} files in {time.perf_counter() - t:.1f} s"
            )
        raw_s, raw_bytes, raw_cpu = raw_decompress(paths)
        runs = [("bzip2 -dc > /dev/null", 1, raw_s, raw_cpu, None)]
        for workers in sorted({1, args.workers}):
            cpu = _cpu()
            out = tmp_dir / f"out-{workers}" / "date=2024-01-01" / "part-0.parquet"
            summary = parse_files(paths, out, ParseConfig(workers=workers))
            runs.append((f"parse_files workers={workers}", workers, summary.seconds, _cpu() - cpu, summary))
    mb = raw_bytes / 1e6
    print(
        f"\n{len(paths)} files, {mb:,.1f} MB decompressed, {os.cpu_count()} CPUs (shared machine: timings noisy)"
    )
    # x raw: raw wall time / this wall time. x raw/core: that over the worker count. x raw CPU: raw CPU seconds
    # over this run's CPU seconds (all threads and processes): the per-core efficiency, independent of how many
    # cores the run managed to use (a worker overlaps decompression and parsing in two threads).
    print(
        f"{'run':<26}{'sec':>8}{'CPU s':>8}{'rows/s':>12}{'rows/CPU-s':>12}{'results/s':>12}{'MB/s':>9}"
        f"{'x raw':>8}{'x raw/core':>12}{'x raw CPU':>11}"
    )
    for name, cores, seconds, cpu, s in runs:
        rate = mb / seconds
        rows = f"{s.rows / seconds:,.0f}" if s else "-"
        rows_cpu = f"{s.rows / cpu:,.0f}" if s else "-"
        results = f"{s.stats['results'] / seconds:,.0f}" if s else "-"
        ratio = seconds and raw_s / seconds
        print(
            f"{name:<26}{seconds:>8.2f}{cpu:>8.2f}{rows:>12}{rows_cpu:>12}{results:>12}{rate:>9.1f}{ratio:>8.2f}"
            f"{ratio / cores:>12.2f}{raw_cpu / cpu:>11.2f}"
        )


if __name__ == "__main__":
    main()

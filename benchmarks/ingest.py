"""Ingest benchmark: parse-to-Parquet throughput against raw `bzip2 -dc` on the same files, same run.

    python benchmarks/ingest.py                  # 1M generated results in 4 hourly files
    python benchmarks/ingest.py --results 200000 # smaller
    python benchmarks/ingest.py --file a.bz2 --file b.bz2
    python benchmarks/ingest.py --data-dir /tmp/dumps  # generate once, reuse on later runs

Target (SPEC/brief): pipeline >= 0.8x the raw decompression rate per core: rows per CPU-second against
`bzip2 -dc > /dev/null` on the same files in the same round ("x raw CPU" of the workers=1 row, which runs
one thread like bzip2). Each round runs every row once; --repeat rounds (default 2) give the range.
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
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pingllm_core.ingest.parse import parse_files
from pingllm_core.ingest.parse_block import ParseConfig

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


def decompressed_bytes(paths: list[Path]) -> int:
    """Total decompressed size (one untimed pass)."""
    size = 0
    for p in paths:
        out = subprocess.run(f"bzip2 -dc '{p}' | wc -c", shell=True, check=True, capture_output=True)
        size += int(out.stdout)
    return size


def raw_decompress(paths: list[Path], parallel: int = 1) -> tuple[float, float]:
    """Seconds and CPU seconds of `bzip2 -dc > /dev/null` over every file, `parallel` processes at a time."""
    start, cpu = time.perf_counter(), _cpu()
    with ThreadPoolExecutor(parallel) as pool:
        list(
            pool.map(lambda p: subprocess.run(f"bzip2 -dc '{p}' > /dev/null", shell=True, check=True), paths)
        )
    return time.perf_counter() - start, _cpu() - cpu


@dataclass
class Run:
    name: str
    cores: int  # processes (or threads) the run keeps busy
    seconds: float
    cpu: float
    rows: int = 0
    results: int = 0
    parallel: int = 1  # bzip2 processes at once in the baseline it is compared with in "x same-par CPU"


def one_round(paths: list[Path], workers: int, out_dir: Path) -> list[Run]:
    """Every row of the table once, baselines first, on the same files."""
    runs = []
    s, c = raw_decompress(paths)
    runs.append(Run("bzip2 -dc > /dev/null", 1, s, c))
    variants = [("parse_files workers=1", 1, ParseConfig(workers=1, prefetch=False))]
    # the same with the standard library's decoder only (the reference decoder; the fast one is indexed_bzip2)
    variants.append(("workers=1, stdlib bz2 only", 1, ParseConfig(workers=1, prefetch=False, fast_bz2=False)))
    variants.append(("parse_files workers=1 +prefetch", 2, ParseConfig(workers=1, prefetch=True)))
    if workers > 1:
        s, c = raw_decompress(paths, workers)
        runs.append(Run(f"bzip2 -dc, {workers} at once", workers, s, c, parallel=workers))
        variants.append((f"parse_files workers={workers}", workers, ParseConfig(workers=workers)))
    for name, cores, cfg in variants:
        cpu = _cpu()
        summary = parse_files(paths, out_dir / "date=2024-01-01" / "part-0.parquet", cfg)
        rows, results = summary.rows, summary.stats["results"]
        runs.append(Run(name, cores, summary.seconds, _cpu() - cpu, rows, results, parallel=cfg.workers))
    return runs


def print_table(runs: list[Run], mb: float) -> None:
    """One round as a table. x raw: raw wall time / this wall time; x raw/core: that over the cores the run
    keeps busy; x raw CPU: raw CPU seconds (one bzip2 at a time) over this run's CPU seconds, all threads and
    processes: the per-core efficiency; x same-par CPU: the same against bzip2 run with the same number of
    processes at once (on a machine whose cores slow each other down, the fair baseline for parallel rows)."""
    raw = runs[0]
    par = {r.parallel: r for r in runs if not r.rows}
    print(
        f"{'run':<34}{'sec':>7}{'CPU s':>8}{'rows/s':>11}{'rows/CPU-s':>12}{'MB/s':>7}"
        f"{'x raw':>7}{'x raw/core':>11}{'x raw CPU':>10}{'x same-par CPU':>15}"
    )
    for r in runs:
        ratio = raw.seconds / r.seconds
        same = par.get(r.parallel, raw)
        rows = f"{r.rows / r.seconds:,.0f}" if r.rows else "-"
        rows_cpu = f"{r.rows / r.cpu:,.0f}" if r.rows else "-"
        print(
            f"{r.name:<34}{r.seconds:>7.2f}{r.cpu:>8.2f}{rows:>11}{rows_cpu:>12}{mb / r.seconds:>7.1f}"
            f"{ratio:>7.2f}{ratio / r.cores:>11.2f}{raw.cpu / r.cpu:>10.2f}{same.cpu / r.cpu:>15.2f}"
        )


def main() -> None:
    """Run the benchmark and print the table (one per round, then the range over rounds)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=1_000_000, help="generated results (default 1M)")
    ap.add_argument("--hours", type=int, default=4, help="hourly files to split the generated dump into")
    ap.add_argument("--file", action="append", type=Path, help="use these dump files instead of generating")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the scaling row")
    ap.add_argument("--data-dir", type=Path, help="generate into (or reuse the dumps already in) this folder")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (the machine is shared: report the range)")
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
        mb = decompressed_bytes(paths) / 1e6
        rounds = []
        for k in range(args.repeat):
            rounds.append(one_round(paths, args.workers, tmp_dir / f"out-{k}"))
            rows = max(r.rows for r in rounds[-1])
            print(
                f"\nround {k + 1}: {len(paths)} files, {mb:,.1f} MB decompressed, {rows:,} rows, "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} (shared machine: timings noisy)"
            )
            print_table(rounds[-1], mb)
    if len(rounds) > 1:
        print(f"\nrange over {len(rounds)} rounds (min-max):")
        print(f"{'run':<34}{'rows/CPU-s':>20}{'x raw CPU':>14}{'x same-par CPU':>16}")
        for i, r in enumerate(rounds[0]):
            same = [{q.parallel: q for q in rnd if not q.rows}.get(rnd[i].parallel, rnd[0]) for rnd in rounds]
            x = [rnd[0].cpu / rnd[i].cpu for rnd in rounds]
            xs = [s.cpu / rnd[i].cpu for s, rnd in zip(same, rounds, strict=True)]
            rc = [rnd[i].rows / rnd[i].cpu for rnd in rounds] if r.rows else []
            rc_text = f"{min(rc):,.0f}-{max(rc):,.0f}" if rc else "-"
            print(f"{r.name:<34}{rc_text:>20}{min(x):>7.2f}-{max(x):.2f}{min(xs):>9.2f}-{max(xs):.2f}")


if __name__ == "__main__":
    main()

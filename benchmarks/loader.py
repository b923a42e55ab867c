"""Loader throughput: tokens per CPU-second of the Grain loader vs the seed's pure-Python tokenizer.

Both run in this process, one core, on the same probe rows, and both count real (non-padding) tokens:

- the loader reads its ArrayRecord rows, decodes them, samples windows and modes, tokenizes and packs;
- the seed baseline does what the seed project did: it reads the same rows from an ArrayRecord file in
  the seed's storage form (a row = the probe's measurements as (unix s, src string, dst string, rtt)
  tuples, pickled: the cheapest stdlib decoding, so generous to it), decodes them, samples windows and
  modes with `random`, and tokenizes one measurement at a time (`ipaddress.ip_address` per address,
  `struct.pack`, Python lists, `random.shuffle` of fields), padding one context per row.

Writing either record format is preparation and is not timed; reading and decoding rows is timed for both.

    python benchmarks/loader.py [--measurements 300000] [--batches 1000]
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grain  # noqa: E402
import seed_tokenizer  # noqa: E402
from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402

from pingllm_core.data import loader, records, tokens  # noqa: E402
from pingllm_core.data.loader_config import LoaderConfig  # noqa: E402

TARGET_TOKENS_PER_S = 600_000  # what one accelerator host must be fed (the study's base model)


def synthetic_split(path: Path, n_meas: int, seed: int = 0) -> None:
    """A split Parquet with probes of very different sizes, dual-stack sources, 240 s pings, failures."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.lognormal(6.0, 1.5, 4000).astype(np.int64))
    sizes = sizes[np.cumsum(sizes) <= n_meas]
    n = int(sizes.sum())
    prb = np.repeat(np.arange(1, len(sizes) + 1, dtype=np.int32), sizes)
    v4 = [
        f"{a}.{b}.{c}.{d}"
        for a, b, c, d in rng.integers([11, 0, 0, 1], [200, 256, 256, 255], (len(sizes), 4))
    ]
    v6 = [f"2a0{a % 10:x}:{b:x}:{c:x}::{d:x}" for a, b, c, d in rng.integers(0, 1 << 16, (len(sizes), 4))]
    dst4 = [f"193.0.{i}.{i % 250 + 1}" for i in range(60)]
    dst6 = [f"2001:67c:{i:x}::{i + 1:x}" for i in range(40)]
    dual = rng.random(len(sizes)) < 0.5
    is6 = (rng.random(n) < 0.4) & dual[prb - 1]
    src = np.where(is6, np.array(v6, dtype=object)[prb - 1], np.array(v4, dtype=object)[prb - 1])
    dst = np.where(
        is6,
        np.array(dst6, dtype=object)[rng.integers(0, 40, n)],
        np.array(dst4, dtype=object)[rng.integers(0, 60, n)],
    )
    # Each probe pings every 240 s from its own start time, within a 30-day window.
    start = rng.integers(0, 30 * 86_400, len(sizes))[prb - 1]
    step = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    t = 1_720_000_000 + start + step * 240 // 20
    rtt = np.round(rng.lognormal(3.5, 0.8, n), 3)
    rtt[rng.random(n) < 0.05] = -1.0
    table = pa.table(
        {
            "event_time": pa.array(t, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            "src_addr": pa.array(src.tolist(), pa.string()),
            "dst_addr": pa.array(dst.tolist(), pa.string()),
            "ip_version": pa.array(np.where(is6, 6, 4), pa.int8()),
            "rtt": pa.array(rtt, pa.float64()),
            "prb_id": pa.array(prb, pa.int32()),
        }
    )
    pq.write_table(table, path)


def bench_loader(rec_dir: Path, cfg: LoaderConfig, batches: int) -> dict:
    """Real tokens and token slots per CPU-second of the in-process loader (read, sample, tokenize, pack)."""
    it = loader.make_train_iter(rec_dir, cfg)
    for _ in range(2):  # warm-up: open readers, first allocations
        next(it)
    real = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        b = next(it)
        real += int(np.count_nonzero(b["segment_ids"]))  # real (non-padding) tokens
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    slots = batches * cfg.batch_size * cfg.seq_len
    return {"real": real, "slots": slots, "cpu": cpu, "wall": wall}


def bench_seed(seed_rows: Path, seq_len: int, min_tokens: int) -> dict:
    """The same for the seed pipeline (read + decode rows, then per-measurement Python), until min_tokens."""
    source = grain.sources.ArrayRecordDataSource([str(seed_rows)])
    order = np.random.default_rng(0).permutation(len(source)).tolist()
    rng = random.Random(0)
    real = n_rows = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    i = 0
    while real < min_tokens:
        meas: list[seed_tokenizer.Meas] = pickle.loads(source[order[i % len(order)]])
        # The seed used a fixed ~64 measurements per 1024-token context as its window target.
        ctxs = seed_tokenizer.row_contexts(meas, rng, seq_len, target=max(1, seq_len * 5 // 4 // 20))
        padded = seed_tokenizer.pad_rows(ctxs, seq_len)
        real += sum(len(c) for c in ctxs)
        n_rows += len(padded)
        i += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"real": real, "slots": n_rows * seq_len, "cpu": cpu, "wall": wall}


def rows_as_python(rec_dir: Path) -> list[list[seed_tokenizer.Meas]]:
    """Every probe row as a list of (time, src, dst, rtt) tuples with address strings (the seed's form)."""
    src = records.ProbeRecordSource(rec_dir)
    out = []
    for i in range(len(src)):
        m = src[i].measurements()
        out.append(
            list(
                zip(
                    m.time.tolist(),
                    tokens.bytes_to_ip(m.src, m.src_v6),
                    tokens.bytes_to_ip(m.dst, m.dst_v6),
                    m.rtt.tolist(),
                    strict=True,
                )
            )
        )
    return out


def write_seed_rows(rows: list[list[seed_tokenizer.Meas]], path: Path) -> None:
    """The same probe rows in the seed's storage form: one pickled list of tuples per ArrayRecord record."""
    writer = ArrayRecordWriter(str(path), "group_size:1")
    try:
        for row in rows:
            writer.write(pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        writer.close()


def check_seed_language(rows: list[list[seed_tokenizer.Meas]]) -> None:
    """The seed output decodes with our codec to the measurements it was given."""
    rng = random.Random(1)
    meas = rows[0][:20]
    toks = seed_tokenizer.tokenize_context(meas, "full", rng, 10_000)
    m, has_time, _ = tokens.decode_tokens(np.array(toks))
    assert has_time.all() and m.time.tolist() == [x[0] for x in meas]
    assert tokens.bytes_to_ip(m.dst, m.dst_v6) == [x[2] for x in meas]


def main() -> None:
    """Build records from a synthetic split, time loader and seed, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measurements", type=int, default=300_000)
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows-per-group", type=int, default=LoaderConfig.rows_per_group)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_split(tmp / "train.parquet", args.measurements)
        summary = records.write_probe_records(
            tmp / "train.parquet", tmp / "rec", records.RecordsConfig(shards=4)
        )
        print(
            f"records: {summary.measurements} measurements, {summary.probes} probes, {summary.rows} rows, "
            f"{summary.bytes / summary.measurements:.1f} B/measurement, {summary.seconds:.2f} s "
            f"({summary.measurements / summary.seconds / 1e6:.2f} M measurements/s)"
        )
        cfg = LoaderConfig(
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            read_threads=0,
            rows_per_group=args.rows_per_group,
        )
        ours = bench_loader(tmp / "rec", cfg, args.batches)
        py_rows = rows_as_python(tmp / "rec")
        check_seed_language(py_rows)
        write_seed_rows(py_rows, tmp / "seed_rows.array_record")
        seed = bench_seed(
            tmp / "seed_rows.array_record", args.seq_len, min_tokens=max(ours["real"] // 8, 500_000)
        )
    header = f"{'pipeline':<34}{'real tok/s/core':>16}{'slots/s/core':>14}{'fill':>7}{'cores@600k':>12}{'speedup':>9}"
    print(header)
    print("-" * len(header))
    base = seed["real"] / seed["cpu"]
    for name, r in (
        ("seed (pure Python, per measurement)", seed),
        ("pingllm loader (Grain, vectorised)", ours),
    ):
        per_core = r["real"] / r["cpu"]
        print(
            f"{name:<34}{per_core:>16,.0f}{r['slots'] / r['cpu']:>14,.0f}{r['real'] / r['slots']:>7.1%}"
            f"{TARGET_TOKENS_PER_S / per_core:>12.1f}{per_core / base:>8.1f}x"
        )
    print(
        f"(CPU seconds: loader {ours['cpu']:.2f} for {args.batches} batches of {cfg.batch_size}x{cfg.seq_len}; "
        f"seed {seed['cpu']:.2f}; cores@600k = 600k real tokens/s over real tokens/s per core)"
    )


if __name__ == "__main__":
    main()

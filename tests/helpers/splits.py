"""Small split Parquets in the measurement schema and their probe records, for tests that need real rows."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pingllm_core.data import records

# (prb_id or None, source addresses, measurements): very different sizes, dual-stack and missing ids.
PROBES = [(1, 2, 2000), (2, 1, 5), (3, 1, 40), (4, 2, 300), (None, 1, 10), (None, 1, 7), (5, 1, 1)]


def _public_v4(rng: np.random.Generator) -> str:
    return f"{rng.choice([8, 23, 45, 77, 185, 193])}.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}"


def _public_v6(rng: np.random.Generator) -> str:
    words = [0x2A00 + int(rng.integers(0, 0x100))] + [int(x) for x in rng.integers(0, 1 << 16, 7)]
    return str(ipaddress.IPv6Address(":".join(f"{w:x}" for w in words)))


def make_split(path: Path, seed: int = 0, probes=PROBES) -> pd.DataFrame:
    """Write a small split Parquet (measurement schema) and return it as a DataFrame."""
    rng = np.random.default_rng(seed)
    dst_pool = [_public_v4(rng) for _ in range(30)] + [_public_v6(rng) for _ in range(20)]
    frames = []
    for prb, n_src, n in probes:
        srcs = [_public_v4(rng)] + ([_public_v6(rng)] if n_src == 2 else [])
        src = np.array(srcs)[rng.integers(0, len(srcs), n)]
        is6 = np.array([":" in s for s in src])
        v4d, v6d = np.array(dst_pool[:30]), np.array(dst_pool[30:])
        dst = np.where(is6, v6d[rng.integers(0, len(v6d), n)], v4d[rng.integers(0, len(v4d), n)])
        rtt = np.round(rng.lognormal(3.0, 1.0, n), 3)
        rtt[rng.random(n) < 0.1] = -1.0
        t = 1_700_000_000 + np.sort(rng.integers(0, 86_400 * 3, n))
        frames.append(
            pd.DataFrame(
                {
                    "event_time": pd.to_datetime(t, unit="s", utc=True),
                    "src_addr": src,
                    "dst_addr": dst,
                    "ip_version": np.where(is6, 6, 4).astype(np.int8),
                    "rtt": rtt,
                    "prb_id": pd.array([prb] * n, dtype="Int32"),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)  # unsorted on disk
    schema = pa.schema(
        [
            ("event_time", pa.timestamp("s", tz="UTC")),
            ("src_addr", pa.string()),
            ("dst_addr", pa.string()),
            ("ip_version", pa.int8()),
            ("rtt", pa.float64()),
            ("prb_id", pa.int32()),
        ]
    )
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)
    return df


def make_record_splits(root: Path, splits, cfg: records.RecordsConfig) -> list[Path]:
    """One probe-record folder per (name, probes, seed): a split by make_split, then its records, under root."""
    out = []
    for name, probes, seed in splits:
        make_split(root / f"{name}.parquet", seed=seed, probes=probes)
        records.write_probe_records(root / f"{name}.parquet", root / name, cfg)
        out.append(root / name)
    return out

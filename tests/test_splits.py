"""DuckDB sample and splits: reproducible, disjoint, time-clean, and checked."""

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingllm_core.data.splits import CHECK_NAMES, SplitConfig, check_splits, make_sample_and_splits

T0 = 1_719_792_000  # 2024-07-01T00:00:00Z


def _write_measurements(folder: Path, n: int = 40_000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    prb = rng.integers(1, 300, n).astype(np.int32)
    table = pa.table(
        {
            "event_time": pa.array(
                (T0 + rng.integers(0, 2 * 86_400, n)).astype("datetime64[s]"), pa.timestamp("s", tz="UTC")
            ),
            "src_addr": [f"81.2.{p % 250}.{p // 250 + 1}" for p in prb],
            "dst_addr": [f"91.3.{i}.1" for i in rng.integers(0, 40, n)],
            "ip_version": pa.array(np.full(n, 4, np.int8)),
            "rtt": np.where(rng.random(n) < 0.05, -1.0, rng.gamma(2.0, 20.0, n)),
            "prb_id": prb,
        }
    )
    folder.mkdir(parents=True)
    pq.write_table(table.slice(0, n // 2), folder / "a.parquet")
    pq.write_table(table.slice(n // 2), folder / "b.parquet")
    return str(folder / "*.parquet")


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    glob = _write_measurements(root / "m")
    cfg = SplitConfig(sample_rows=15_000, seed=3)
    first = make_sample_and_splits(glob, root / "a", cfg)
    second = make_sample_and_splits(glob, root / "b", cfg)
    other = make_sample_and_splits(glob, root / "c", SplitConfig(sample_rows=15_000, seed=4))
    return root, first, second, other


def test_sample_has_the_requested_size_and_is_reproducible(split_dirs):
    root, first, _, _ = split_dirs
    assert first.sample_rows == 15_000
    for name in ("sample", "train", "heldout_probes", "future"):
        assert pq.read_table(root / "a" / f"{name}.parquet").equals(
            pq.read_table(root / "b" / f"{name}.parquet")
        )
    assert not pq.read_table(root / "a" / "sample.parquet").equals(
        pq.read_table(root / "c" / "sample.parquet")
    )


def test_sample_is_roughly_uniform_over_time(split_dirs):
    root, *_ = split_dirs
    hours = duckdb.sql(
        f"SELECT hour(event_time) h, count(*) n FROM '{root / 'a' / 'sample.parquet'}' GROUP BY h"
    ).fetchnumpy()["n"]
    assert hours.min() > 0.7 * hours.mean()


def test_splits_partition_the_sample_without_probe_or_time_leaks(split_dirs):
    root, first, *_ = split_dirs
    rows = {k: v.rows for k, v in first.stats.items()}
    assert rows["train"] + rows["heldout_probes"] + rows["future"] == first.sample_rows
    train_probes = set(pq.read_table(root / "a" / "train.parquet")["prb_id"].to_pylist())
    held = set(pq.read_table(root / "a" / "heldout_probes.parquet")["prb_id"].to_pylist())
    assert not train_probes & held
    assert 0.04 < len(held) / len(held | train_probes) < 0.2
    future = (
        pq.read_table(root / "a" / "future.parquet")["event_time"]
        .cast(pa.timestamp("s", tz="UTC"))
        .cast(pa.int64())
        .to_numpy()
    )
    train = (
        pq.read_table(root / "a" / "train.parquet")["event_time"]
        .cast(pa.timestamp("s", tz="UTC"))
        .cast(pa.int64())
        .to_numpy()
    )
    assert future.min() >= first.cutoff_epoch > train.max()
    # Parquet has no seconds unit: whole seconds are stored as milliseconds, in UTC, with SPEC column types.
    schema = pq.read_schema(root / "a" / "train.parquet")
    assert schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert (schema.field("ip_version").type, schema.field("prb_id").type) == (pa.int8(), pa.int32())
    assert all(c.passed for c in check_splits(root / "a", first.cutoff_epoch))
    assert {c.name for c in check_splits(root / "a", first.cutoff_epoch)} == set(CHECK_NAMES)


def test_checks_catch_a_probe_in_both_train_and_heldout(split_dirs, tmp_path):
    root, first, *_ = split_dirs
    for name in ("train", "future"):
        (tmp_path / f"{name}.parquet").write_bytes((root / "a" / f"{name}.parquet").read_bytes())
    train = pq.read_table(root / "a" / "train.parquet")
    pq.write_table(
        pa.concat_tables([pq.read_table(root / "a" / "heldout_probes.parquet"), train.slice(0, 5)]),
        tmp_path / "heldout_probes.parquet",
    )
    failed = {c.name for c in check_splits(tmp_path, first.cutoff_epoch) if not c.passed}
    assert failed == {"probes_disjoint"}


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no measurement Parquet files match"):
        make_sample_and_splits(str(tmp_path / "nothing" / "*.parquet"), tmp_path / "out", SplitConfig())


@pytest.mark.parametrize("share", [2 / 3, 1.0, 1.25])
def test_a_sample_of_two_thirds_of_the_table_or_more_takes_the_whole_table(tmp_path, share):
    # From 2/3 of the table on, the hash pre-filter would keep every row: its threshold used to overflow UINT64.
    glob = _write_measurements(tmp_path / "m", n=3_000)
    whole = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0]
    requested = -(-int(share * 3_000 * 3) // 3)  # ceil, so 2/3 of 3000 is exactly 2000
    summary = make_sample_and_splits(glob, tmp_path / "out", SplitConfig(sample_rows=requested, seed=1))
    assert summary.sample_rows == min(requested, whole)
    if requested >= whole:  # every row of the table, each once
        sample = duckdb.sql(f"SELECT * FROM '{tmp_path / 'out' / 'sample.parquet'}' ORDER BY ALL").fetchall()
        table = duckdb.sql(f"SELECT * FROM read_parquet('{glob}') ORDER BY ALL").fetchall()
        assert sample == table
    assert sum(s.rows for s in summary.stats.values()) == summary.sample_rows


def test_splits_are_the_same_bytes_whatever_the_threads_when_rows_tie(tmp_path):
    """Many rows share a probe and a second (one probe pings many targets at once): the files are written in a
    total order, so the row order (which the loader and the evaluation's row picks follow) is reproducible."""
    rng = np.random.default_rng(1)
    n = 200_000
    prb = rng.integers(1, 20, n).astype(np.int32)
    table = pa.table({
        "event_time": pa.array((T0 + rng.integers(0, 100, n)).astype("datetime64[s]"), pa.timestamp("s", tz="UTC")),
        "src_addr": [f"81.2.0.{p}" for p in prb],
        "dst_addr": [f"91.3.{i // 250}.{i % 250}" for i in rng.integers(0, 5000, n)],
        "ip_version": pa.array(np.full(n, 4, np.int8)),
        "rtt": rng.gamma(2.0, 20.0, n).round(3),
        "prb_id": prb,
    })  # fmt: skip
    (tmp_path / "m").mkdir()
    for k in range(4):
        pq.write_table(table.slice(k * n // 4, n // 4), tmp_path / "m" / f"part-{k}.parquet")
    outs = []
    for threads in (1, 4):
        cfg = SplitConfig(sample_rows=150_000, seed=0, threads=threads)
        make_sample_and_splits(str(tmp_path / "m" / "*.parquet"), tmp_path / f"t{threads}", cfg)
        outs.append({s: pq.read_table(tmp_path / f"t{threads}" / f"{s}.parquet") for s in
                     ("sample", "train", "heldout_probes", "future")})  # fmt: skip
    for name, t in outs[0].items():
        assert t.num_rows and t.equals(outs[1][name]), name

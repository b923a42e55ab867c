"""Reproducible uniform sample and train / heldout_probes / future splits in DuckDB (SPEC section 2)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pingllm_core import db
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA

SPLITS = ("train", "heldout_probes", "future")
CHECK_NAMES = tuple(
    [
        f"{s}_{c}"
        for s in ("train", "heldout_probes", "future")
        for c in ("non_empty", "no_null_keys", "rtt_range")
    ]
    + ["probes_disjoint", "future_after_cutoff", "train_before_cutoff"]
)
KEY_COLUMNS = ("event_time", "src_addr", "dst_addr", "ip_version", "rtt")
MAX_RTT_MS = 600_000.0  # 10 minutes: the parser rejects anything above, so a split never holds more


# Rows are written by probe and time, then by target and RTT: a total order (one probe pings many targets in
# the same second), so the files, the loader's rows and the evaluation's row picks are the same on every run.
ROW_ORDER = "prb_id, event_time, src_addr, dst_addr, rtt"


@dataclass(frozen=True)
class SplitConfig:
    """How the measurement table is sampled and split."""

    sample_rows: int = 200_000  # N rows drawn uniformly at random (real data: 200M out of a month)
    seed: int = 0  # drives the sample and the held-out probe choice
    heldout_probe_share: float = 0.10  # share of probes never seen in training (cold start)
    train_time_share: float = 0.8  # the cutoff sits at this share of the sampled time window
    threads: int = 0  # DuckDB threads; 0 = DuckDB's default (all cores)

    def __post_init__(self) -> None:
        if self.sample_rows <= 0:
            raise ValueError(f"sample_rows must be positive, got {self.sample_rows}")
        if not 0.0 <= self.heldout_probe_share < 1.0:
            raise ValueError(f"heldout_probe_share must be in [0, 1), got {self.heldout_probe_share}")
        if not 0.0 < self.train_time_share <= 1.0:
            raise ValueError(f"train_time_share must be in (0, 1], got {self.train_time_share}")


@dataclass
class SplitStats:
    """What one split holds: the numbers the asset shows."""

    rows: int
    ipv4_share: float
    ipv6_share: float
    failure_share: float
    first_time: str | None
    last_time: str | None
    probes: int


@dataclass
class SplitSummary:
    """Result of `make_sample_and_splits`: paths, cutoff and per-split statistics."""

    sample_rows: int
    cutoff: str
    cutoff_epoch: int
    paths: dict[str, str]
    stats: dict[str, SplitStats]
    heldout_probes: int
    future_unseen_pair_rows: int
    seconds: float

    def to_dict(self) -> dict:
        """Plain-JSON view (for metadata and the summary file)."""
        return asdict(self)


@dataclass
class CheckOutcome:
    """One data-quality check on the splits."""

    name: str
    passed: bool
    detail: str


def _probe_key() -> str:
    # SPEC 3: group by prb_id; the source address stands in where a dump had none.
    return "coalesce(CAST(prb_id AS VARCHAR), src_addr)"


def make_sample(measurement_glob: str, out_dir: Path, cfg: SplitConfig) -> SplitStats:
    """Draw a reproducible uniform sample of `cfg.sample_rows` rows into out_dir/sample.parquet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    con = db.connect(threads=cfg.threads)
    try:
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet('{measurement_glob}')")
    except duckdb.IOException as exc:
        raise ValueError(f"no measurement Parquet files match {measurement_glob}: {exc}") from None
    total = con.execute("SELECT count(*) FROM src").fetchone()[0]
    if total == 0:
        raise ValueError(f"no measurements found in {measurement_glob}")
    # Uniform and reproducible: rank rows by a seeded hash of their content and keep the N smallest.
    # A hash pre-filter (the smallest 1.5 N / total of the 64-bit hash range) keeps the sort small when N is a
    # small share of a large table. From N = 2/3 of the table on, every row would pass: no filter then (its
    # threshold, 2**64, does not fit a UBIGINT), and N at or above the table size takes the whole table.
    prefilter = ""
    if 3 * cfg.sample_rows < 2 * total:
        threshold = 3 * cfg.sample_rows * (2**64 - 1) // (2 * total)  # integer arithmetic: below 2**64 - 1
        prefilter = f"WHERE h <= {threshold}::UBIGINT"
    row_hash = f"hash(epoch(event_time), src_addr, dst_addr, rtt, prb_id, {int(cfg.seed)}::BIGINT)"
    con.execute(
        f"""CREATE TABLE labelled AS
            SELECT event_time, src_addr, dst_addr, ip_version, rtt, prb_id FROM (
                SELECT *, {row_hash} AS h FROM src
            ) {prefilter}
            ORDER BY h, event_time, src_addr, dst_addr, rtt
            LIMIT {int(cfg.sample_rows)}"""
    )
    path = out_dir / "sample.parquet"
    _copy_to_parquet(con, f"SELECT * FROM labelled ORDER BY {ROW_ORDER}", path)
    return _stats(con, "TRUE")


def make_splits(sample_path: Path, out_dir: Path, cfg: SplitConfig) -> SplitSummary:
    """Split the sample into train / heldout_probes / future Parquet files (SPEC section 2)."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    con = db.connect(threads=cfg.threads)
    con.execute(f"CREATE VIEW sample AS SELECT * FROM read_parquet('{sample_path}')")
    heldout_pred = (
        f"(hash({_probe_key()}, 'heldout', {int(cfg.seed)}::BIGINT) % 10000) "
        f"< {int(round(cfg.heldout_probe_share * 10000))}"
    )
    lo, hi = con.execute("SELECT min(epoch(event_time)), max(epoch(event_time)) FROM sample").fetchone()
    if lo is None:
        raise ValueError(f"the sample {sample_path} is empty")
    cutoff_epoch = int(lo + cfg.train_time_share * (hi - lo))
    con.execute(
        f"""CREATE TABLE labelled AS SELECT *,
              CASE WHEN {heldout_pred} THEN 'heldout_probes'
                   WHEN epoch(event_time) < {cutoff_epoch} THEN 'train' ELSE 'future' END AS split
            FROM sample"""
    )
    paths: dict[str, str] = {}
    stats: dict[str, SplitStats] = {}
    for name in SPLITS:
        paths[name] = str(out_dir / f"{name}.parquet")
        _copy_to_parquet(
            con,
            f"SELECT * FROM labelled WHERE split = '{name}' ORDER BY {ROW_ORDER}",
            Path(paths[name]),
        )
        stats[name] = _stats(con, f"split = '{name}'")
    # Future rows on (src, dst) pairs that train never saw: the time-clean comparison with baselines.
    unseen = con.execute(
        """SELECT count(*) FROM labelled f WHERE f.split = 'future' AND NOT EXISTS (
              SELECT 1 FROM labelled t WHERE t.split = 'train'
              AND t.src_addr = f.src_addr AND t.dst_addr = f.dst_addr)"""
    ).fetchone()[0]
    cutoff = con.execute(f"SELECT strftime(to_timestamp({cutoff_epoch}), '%Y-%m-%dT%H:%M:%SZ')").fetchone()[0]
    summary = SplitSummary(
        sample_rows=int(con.execute("SELECT count(*) FROM sample").fetchone()[0]),
        cutoff=cutoff,
        cutoff_epoch=cutoff_epoch,
        paths=paths,
        stats=stats,
        heldout_probes=stats["heldout_probes"].probes,
        future_unseen_pair_rows=int(unseen),
        seconds=time.perf_counter() - t0,
    )
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def make_sample_and_splits(measurement_glob: str, out_dir: Path, cfg: SplitConfig) -> SplitSummary:
    """Sample, then split: the whole of SPEC section 2 in one call."""
    make_sample(measurement_glob, out_dir, cfg)
    return make_splits(out_dir / "sample.parquet", out_dir, cfg)


def _copy_to_parquet(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    """Stream a query's rows into Parquet with the exact measurement schema (DuckDB itself would write
    microsecond timestamps; SPEC section 1 says seconds)."""
    # A cursor of its own: the relation API streams without the copy that Arrow output of execute() makes,
    # and it may not run on a connection whose last execute() result is unfinished.
    cur = con.cursor()
    try:
        reader = cur.sql(sql).to_arrow_reader(256_000)
        with pq.ParquetWriter(path, MEASUREMENT_SCHEMA) as writer:
            for batch in reader:
                table = pa.Table.from_batches([batch]).select(MEASUREMENT_SCHEMA.names)
                writer.write_table(table.cast(MEASUREMENT_SCHEMA))
    finally:
        cur.close()


def _stats(con: duckdb.DuckDBPyConnection, pred: str) -> SplitStats:
    row = con.execute(
        f"""SELECT count(*),
                   avg(CASE WHEN ip_version = 4 THEN 1.0 ELSE 0.0 END),
                   avg(CASE WHEN rtt < 0 THEN 1.0 ELSE 0.0 END),
                   min(event_time)::VARCHAR, max(event_time)::VARCHAR,
                   count(DISTINCT {_probe_key()})
            FROM labelled WHERE {pred}"""
    ).fetchone()
    n, v4, fail, first, last, probes = row
    v4 = float(v4) if v4 is not None else 0.0
    return SplitStats(
        rows=int(n),
        ipv4_share=round(v4, 4),
        ipv6_share=round(1.0 - v4, 4) if n else 0.0,
        failure_share=round(float(fail or 0.0), 4),
        first_time=first,
        last_time=last,
        probes=int(probes),
    )


def check_splits(out_dir: Path, cutoff_epoch: int | None = None) -> list[CheckOutcome]:
    """Data-quality checks over written splits: non-empty, no null keys, RTT range, disjoint probes, time."""
    con = db.connect()
    out: list[CheckOutcome] = []
    for name in SPLITS:
        path = out_dir / f"{name}.parquet"
        n, nulls, bad_rtt = con.execute(
            f"""SELECT count(*),
                       count(*) FILTER (WHERE {" OR ".join(f"{c} IS NULL" for c in KEY_COLUMNS)}),
                       count(*) FILTER (WHERE NOT (rtt = -1.0 OR (rtt >= 0 AND rtt <= {MAX_RTT_MS})))
                FROM read_parquet('{path}')"""
        ).fetchone()
        out.append(CheckOutcome(f"{name}_non_empty", n > 0, f"{n} rows"))
        out.append(CheckOutcome(f"{name}_no_null_keys", nulls == 0, f"{nulls} rows with a null key column"))
        out.append(
            CheckOutcome(f"{name}_rtt_range", bad_rtt == 0, f"{bad_rtt} rows outside -1 or [0, 10 min]")
        )
    overlap = con.execute(
        f"""SELECT count(*) FROM (
              SELECT DISTINCT {_probe_key()} AS k FROM read_parquet('{out_dir / "train.parquet"}')
              INTERSECT
              SELECT DISTINCT {_probe_key()} AS k FROM read_parquet('{out_dir / "heldout_probes.parquet"}'))"""
    ).fetchone()[0]
    out.append(
        CheckOutcome("probes_disjoint", overlap == 0, f"{overlap} probes in both train and heldout_probes")
    )
    if cutoff_epoch is not None:
        early = con.execute(
            f"SELECT count(*) FROM read_parquet('{out_dir / 'future.parquet'}') "
            f"WHERE epoch(event_time) < {int(cutoff_epoch)}"
        ).fetchone()[0]
        late = con.execute(
            f"SELECT count(*) FROM read_parquet('{out_dir / 'train.parquet'}') "
            f"WHERE epoch(event_time) >= {int(cutoff_epoch)}"
        ).fetchone()[0]
        out.append(CheckOutcome("future_after_cutoff", early == 0, f"{early} future rows before the cutoff"))
        out.append(
            CheckOutcome("train_before_cutoff", late == 0, f"{late} train rows at or after the cutoff")
        )
    return out

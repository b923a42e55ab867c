"""The DuckDB catalog under the data root: views over the Parquet outputs, parse rejects, evaluation metrics.

Every function takes an open connection (the assets pass DuckDBResource's; tests and scripts `db.connect`),
so this module knows nothing of Dagster. Views read the Parquet files at query time: a new day or a new
split shows up without re-registering, and the catalog file itself stays small.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import duckdb

SPLIT_VIEWS = ("sample", "train", "heldout_probes", "future")  # one view per split file, same name


def _literal(path: str | Path) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def count(con: duckdb.DuckDBPyConnection, name: str) -> int:
    """Rows in a catalog view or table."""
    return int(con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])


def register_measurements(con: duckdb.DuckDBPyConnection, measurements_dir: Path) -> int:
    """View `measurements` over every day's Parquet (plus its `date` partition column); returns its rows."""
    files = Path(measurements_dir) / "date=*" / "*.parquet"
    con.execute(
        "CREATE OR REPLACE VIEW measurements AS "
        f"SELECT * FROM read_parquet({_literal(files)}, hive_partitioning = true)"
    )
    return count(con, "measurements")


def register_splits(
    con: duckdb.DuckDBPyConnection, splits_dir: Path, names: Iterable[str] = SPLIT_VIEWS
) -> dict[str, int]:
    """A view per split file that exists (`sample`, `train`, `heldout_probes`, `future`); rows of each."""
    out = {}
    for name in names:
        path = Path(splits_dir) / f"{name}.parquet"
        if path.exists():
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet({_literal(path)})')
            out[name] = count(con, name)
    return out


def load_rejects(con: duckdb.DuckDBPyConnection, rejects_dir: Path) -> int:
    """Tables `parse_rejects` (date, reason, lines) and `parse_reject_samples` from the per-day rejects JSON.

    Rebuilt from every `date=<day>.json` the measurements asset wrote; returns the rejected lines in total.
    """
    counts: list[tuple[str, str, int]] = []
    samples: list[tuple[str, str, int | None, str]] = []
    for path in sorted(Path(rejects_dir).glob("date=*.json")):
        day = path.stem.split("=", 1)[1]
        data = json.loads(path.read_text())
        for key, n in data.get("stats", {}).items():
            if key.startswith("rejected_"):
                counts.append((day, key.removeprefix("rejected_"), int(n)))
        for r in data.get("rejects", []):
            samples.append((day, str(r.get("reason")), r.get("line_no"), str(r.get("text", ""))))
    con.execute("CREATE OR REPLACE TABLE parse_rejects (date DATE, reason VARCHAR, lines BIGINT)")
    con.execute(
        "CREATE OR REPLACE TABLE parse_reject_samples (date DATE, reason VARCHAR, line_no BIGINT, text VARCHAR)"
    )
    if counts:
        con.executemany("INSERT INTO parse_rejects VALUES (?, ?, ?)", counts)
    if samples:
        con.executemany("INSERT INTO parse_reject_samples VALUES (?, ?, ?, ?)", samples)
    return sum(n for _, _, n in counts)


def _metric_rows(splits: Mapping[str, Mapping]) -> list[tuple[str, str, str, float | None]]:
    """(split, method, metric, value) for every number under metrics["splits"]-like nesting."""
    rows = []
    for split, methods in splits.items():
        for method, values in methods.items():
            if not isinstance(values, Mapping):
                continue
            for metric, v in values.items():
                if isinstance(v, bool | int | float):
                    value = float(v)
                    rows.append((split, method, metric, value if math.isfinite(value) else None))
    return rows


def record_evaluation(
    con: duckdb.DuckDBPyConnection,
    metrics: Mapping,
    run_id: str,
    checkpoint: str = "",
    evaluated_at: dt.datetime | None = None,
) -> int:
    """Append one evaluation's per-split numbers to `evaluation_metrics` (replacing `run_id`'s); rows added.

    View `evaluation_latest` holds the newest evaluation's rows.

    Long format: split (`heldout_probes`, or `heldout_probes/ipv4` for the per-IP-version numbers), method
    (`model`, each baseline, `model_failure`, ...), metric (`rel_p50`, `mae`, `auc`, ...), value.
    """
    con.execute(
        """CREATE TABLE IF NOT EXISTS evaluation_metrics (
             run_id VARCHAR, evaluated_at TIMESTAMP, checkpoint VARCHAR,
             split VARCHAR, method VARCHAR, metric VARCHAR, value DOUBLE)"""
    )
    con.execute(
        "CREATE OR REPLACE VIEW evaluation_latest AS SELECT * FROM evaluation_metrics "
        "WHERE evaluated_at = (SELECT max(evaluated_at) FROM evaluation_metrics)"
    )
    when = (evaluated_at or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    rows = _metric_rows(metrics.get("splits", {})) + _metric_rows(metrics.get("by_ip_version", {}))
    con.execute("DELETE FROM evaluation_metrics WHERE run_id = ?", [run_id])
    con.executemany(
        "INSERT INTO evaluation_metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(run_id, when, checkpoint, *r) for r in rows],
    )
    return len(rows)

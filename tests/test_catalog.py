"""The DuckDB connect helper and the catalog: views over Parquet, parse rejects, evaluation metrics per run."""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingllm_core import db
from pingllm_core.data import catalog
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA


def measurement_table(n: int, day: dt.date) -> pa.Table:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return pa.table(
        {
            "event_time": [start + dt.timedelta(minutes=i) for i in range(n)],
            "src_addr": ["192.0.2.1"] * n,
            "dst_addr": ["198.51.100.7"] * n,
            "ip_version": [4] * n,
            "rtt": [10.0 + i for i in range(n)],
            "prb_id": [1] * n,
        },
        schema=MEASUREMENT_SCHEMA,
    )


def test_connect_applies_threads_and_memory_limit_and_creates_the_folder_of_a_file(tmp_path):
    con = db.connect(tmp_path / "new" / "x.duckdb", threads=1, memory_limit="512MB")
    assert con.execute("SELECT current_setting('threads')").fetchone()[0] == 1
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0].startswith("488")  # MiB
    con.close()
    assert (tmp_path / "new" / "x.duckdb").exists()
    ordered = db.connect(config={"preserve_insertion_order": False})
    assert ordered.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0] is False
    with pytest.raises(ValueError, match="threads"):
        db.connect(threads=-1)


def test_views_count_every_day_and_split_and_see_new_files_without_re_registering(tmp_path):
    root = tmp_path / "measurements"
    for day, n in ((dt.date(2024, 7, 1), 5), (dt.date(2024, 7, 2), 7)):
        (root / f"date={day}").mkdir(parents=True)
        pq.write_table(measurement_table(n, day), root / f"date={day}" / "part-0.parquet")
    splits = tmp_path / "splits"
    splits.mkdir()
    pq.write_table(measurement_table(3, dt.date(2024, 7, 1)), splits / "train.parquet")
    con = db.connect(tmp_path / "pingllm.duckdb")
    assert catalog.register_measurements(con, root) == 12
    assert con.execute("SELECT count(DISTINCT date) FROM measurements").fetchone()[0] == 2  # hive column
    assert catalog.register_splits(con, splits) == {"train": 3}  # the other split files do not exist yet
    day3 = dt.date(2024, 7, 3)
    (root / f"date={day3}").mkdir()
    pq.write_table(measurement_table(4, day3), root / f"date={day3}" / "part-0.parquet")
    assert catalog.count(con, "measurements") == 16
    con.close()
    reopened = db.connect(tmp_path / "pingllm.duckdb", read_only=True)  # the views live in the file
    assert catalog.count(reopened, "train") == 3


def test_rejects_load_by_reason_per_day_and_a_reload_replaces_them(tmp_path):
    for day, bad_json in (("2024-07-01", 3), ("2024-07-02", 1)):
        (tmp_path / f"date={day}.json").write_text(
            json.dumps(
                {
                    "stats": {"rows": 100, "rejected_bad_json": bad_json, "rejected_bad_address": 2},
                    "rejects": [{"reason": "bad_json", "line_no": 7, "text": "{oops"}],
                }
            )
        )
    con = db.connect()
    assert catalog.load_rejects(con, tmp_path) == 8
    assert catalog.load_rejects(con, tmp_path) == 8  # rebuilt, not appended
    by_reason = dict(con.execute("SELECT reason, sum(lines) FROM parse_rejects GROUP BY reason").fetchall())
    assert by_reason == {"bad_json": 4, "bad_address": 4}
    assert catalog.count(con, "parse_reject_samples") == 2


def test_evaluation_metrics_keep_one_set_per_run_and_latest_shows_the_newest(tmp_path):
    metrics = {
        "splits": {
            "heldout_probes": {
                "rows": 10,
                "model": {"rel_p50": 0.2, "mae": 3.0, "n": 9},
                "global_median": {"rel_p50": 0.4, "mae": float("nan"), "n": 9},
                "model_failure": {"roc_auc": 0.7, "note": "text is skipped"},
            }
        },
        "by_ip_version": {"heldout_probes/ipv4": {"model": {"rel_p50": 0.25}}},
    }
    con = db.connect(tmp_path / "pingllm.duckdb")
    first = dt.datetime(2024, 7, 3, 12, tzinfo=dt.UTC)
    assert catalog.record_evaluation(con, metrics, "run-a", "ckpt/tiny", evaluated_at=first) == 8
    assert catalog.record_evaluation(con, metrics, "run-a", "ckpt/tiny", evaluated_at=first) == 8
    later = first + dt.timedelta(hours=1)
    catalog.record_evaluation(con, metrics, "run-b", "ckpt/tiny", evaluated_at=later)
    assert con.execute("SELECT count(DISTINCT run_id), count(*) FROM evaluation_metrics").fetchone() == (
        2,
        16,
    )
    assert con.execute("SELECT DISTINCT run_id FROM evaluation_latest").fetchall() == [("run-b",)]
    rows = con.execute(
        "SELECT method, value FROM evaluation_latest WHERE split = 'heldout_probes' AND metric = 'rel_p50' "
        "ORDER BY value"
    ).fetchall()
    assert rows == [("model", 0.2), ("global_median", 0.4)]
    nan_mae = "SELECT value FROM evaluation_latest WHERE method = 'global_median' AND metric = 'mae'"
    assert con.execute(nan_mae).fetchone() == (None,)

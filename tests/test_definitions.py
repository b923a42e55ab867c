"""One ProjectSettings makes the partitions, the schedule and the resources: an override moves them all.
And `dg`, which reads the project from pyproject.toml, launches it."""

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pingllm_assets.definitions import build_defs
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA
from pingllm_core.settings import ProjectSettings

DAYS = ["2024-08-30", "2024-08-31", "2024-09-01", "2024-09-02"]
PROJECT = Path(__file__).parents[1]


def check_window(defs: dg.Definitions, root, days: list[str]) -> None:
    graph = defs.resolve_asset_graph()
    for key in ("raw_ping_dumps", "measurements"):
        assert graph.get(dg.AssetKey(key)).partitions_def.get_partition_keys() == days
    assert graph.get(dg.AssetKey("splits")).partitions_def is None
    settings = defs.resources["pingllm"].settings()
    assert (settings.start_day, settings.end_day, settings.data_root) == (days[0], days[-1], root)
    assert defs.resources["catalog"].database == str(root / "pingllm.duckdb")
    schedule = defs.resolve_schedule_def("monthly_refresh")
    when = dt.datetime(2024, 9, 1, 3, tzinfo=dt.UTC)
    (request,) = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when)).run_requests
    assert request.partition_key_range == dg.PartitionKeyRange(days[0], "2024-08-31")


def test_settings_given_to_build_defs_move_partitions_schedule_resource_and_catalog(tmp_path):
    settings = ProjectSettings(data_root=tmp_path, start_day=DAYS[0], end_day=DAYS[-1], synth_probes=4)
    defs = build_defs(settings)
    check_window(defs, tmp_path, DAYS)
    # A day that only the override defines runs, and the asset writes where the same settings say.
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        partition_key=DAYS[-1],
        asset_selection=[dg.AssetKey("raw_ping_dumps")],
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    assert len(list((tmp_path / "raw" / DAYS[-1]).glob("ping-*.bz2"))) == 24


def test_env_overrides_move_the_same_things(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CONFIG", raising=False)
    monkeypatch.setenv("PINGLLM_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("PINGLLM_START_DAY", DAYS[0])
    monkeypatch.setenv("PINGLLM_END_DAY", DAYS[-1])
    check_window(build_defs(), tmp_path, DAYS)


def test_parquet_assets_declare_the_measurement_columns_with_descriptions():
    graph = build_defs().resolve_asset_graph()
    for name in ("measurements", "measurement_sample", "splits"):
        schema = graph.get(dg.AssetKey(name)).metadata["dagster/column_schema"]  # as declared: a TableSchema
        assert [c.name for c in schema.columns] == MEASUREMENT_SCHEMA.names
        assert all(c.description for c in schema.columns)
        assert [c.type for c in schema.columns][:2] == ["timestamp[s, tz=UTC]", "string"]


@pytest.mark.e2e
@pytest.mark.slow
def test_dg_launch_materializes_a_day_from_the_project_without_warnings(tmp_path, dagster_home):
    env = {k: v for k, v in os.environ.items() if k != "PINGLLM_CONFIG"}
    env.update(DAGSTER_HOME=str(dagster_home), PINGLLM_DATA_ROOT=str(tmp_path / "data"), PINGLLM_SYNTH_PROBES="4",
               PINGLLM_START_DAY=DAYS[0], PINGLLM_END_DAY=DAYS[0])  # fmt: skip
    cmd = [
        str(Path(sys.executable).parent / "dg"),
        "launch",
        "--assets",
        "raw_ping_dumps",
        "--partition",
        DAYS[0],
    ]
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not re.search(r"\w+Warning\b", out), out[-4000:]
    assert len(list((tmp_path / "data" / "raw" / DAYS[0]).glob("ping-*.bz2"))) == 24

"""The monthly refresh schedule, evaluated with Dagster's testing tools (no materialization of the graph)."""

import datetime as dt
from dataclasses import replace

import dagster as dg
import pytest
from dagster._core.storage import tags as dagster_tags

from pingllm_assets.definitions import defs
from pingllm_assets.partitions import DAILY
from pingllm_assets.resources import default_settings, resources_for
from pingllm_assets.schedules import (
    MONTH_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    build_monthly_refresh_schedule,
    previous_month,
    refresh_job,
)
from tests.helpers.graph_assets import GRAPH_ASSETS

ALL_ASSETS = set(GRAPH_ASSETS)


def tick(schedule: dg.ScheduleDefinition, day: str):
    when = dt.datetime.fromisoformat(f"{day}T03:00:00+00:00")
    return schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when))


def test_schedule_is_registered_stopped_monthly_on_the_first():
    schedule = defs.resolve_schedule_def("monthly_refresh")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.cron_schedule == "0 3 1 * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "monthly_refresh_job"
    job = defs.resolve_job_def("monthly_refresh_job")
    keys = {k.to_user_string() for k in job.asset_layer.asset_graph.get_all_asset_keys()}
    assert keys == ALL_ASSETS
    # Every asset check travels with the job, so blocking checks still gate the downstream assets.
    check_keys = {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
    assert "heldout_rtt_loss_below_marginal" in check_keys and "probes_disjoint" in check_keys


def test_range_tags_are_dagsters_own():
    assert RANGE_START_TAG == dagster_tags.ASSET_PARTITION_RANGE_START_TAG
    assert RANGE_END_TAG == dagster_tags.ASSET_PARTITION_RANGE_END_TAG


@pytest.mark.parametrize(
    "day, first, last",
    [("2024-08-01", "2024-07-01", "2024-07-31"), ("2024-03-01", "2024-02-01", "2024-02-29"),
     ("2025-01-01", "2024-12-01", "2024-12-31"), ("2024-08-17", "2024-07-01", "2024-07-31")],
)  # fmt: skip
def test_previous_month(day, first, last):
    assert previous_month(dt.date.fromisoformat(day)) == (
        dt.date.fromisoformat(first),
        dt.date.fromisoformat(last),
    )


def test_full_month_becomes_one_run_over_the_partition_range():
    year = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2025-01-01")
    schedule = build_monthly_refresh_schedule(refresh_job, year, name="test_refresh")
    data = tick(schedule, "2024-03-01")
    assert data.skip_message is None
    (request,) = data.run_requests
    assert request.partition_key_range == dg.PartitionKeyRange("2024-02-01", "2024-02-29")
    assert request.tags[MONTH_TAG] == "2024-02"
    assert request.run_key == "monthly-refresh-2024-02"
    assert request.partition_key is None and request.asset_selection is None  # the whole job


def test_months_outside_the_partitions_are_skipped_with_the_month_named():
    year = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2025-01-01")
    schedule = build_monthly_refresh_schedule(refresh_job, year, name="test_refresh")
    for day, month in [("2024-01-01", "2023-12"), ("2025-02-01", "2025-01")]:
        data = tick(schedule, day)
        assert data.run_requests == []
        assert f"month {month} has no daily partitions" in data.skip_message
        assert "2024-01-01..2024-12-31" in data.skip_message


def test_configured_schedule_clips_to_the_defined_days():
    """The real schedule over the partitions built from settings (embedded default: two July days)."""
    schedule = defs.resolve_schedule_def("monthly_refresh")
    keys = DAILY.get_partition_keys()
    first_day = dt.date.fromisoformat(keys[0])
    month_after = (first_day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    (request,) = tick(schedule, month_after.isoformat()).run_requests
    in_month = [k for k in keys if k[:7] == keys[0][:7]]
    assert request.partition_key_range == dg.PartitionKeyRange(in_month[0], in_month[-1])
    # The month after the last defined day is outside the window: skipped, not failed.
    last_day = dt.date.fromisoformat(keys[-1])
    two_after = (last_day.replace(day=28) + dt.timedelta(days=35)).replace(day=1)
    data = tick(schedule, two_after.isoformat())
    skipped_month = previous_month(two_after)[0].strftime("%Y-%m")
    assert data.run_requests == [] and f"month {skipped_month} has no daily partitions" in data.skip_message


def test_schedule_run_request_runs_the_whole_range_in_one_run(tmp_path):
    """The request's tags, launched on the job, give raw_ping_dumps every day of the range in one run."""
    run_defs = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[refresh_job],
        resources=resources_for(replace(default_settings(), data_root=tmp_path, synth_probes=4)),
    )
    schedule = build_monthly_refresh_schedule(refresh_job, DAILY, name="test_refresh")
    first_day = dt.date.fromisoformat(DAILY.get_partition_keys()[0])
    month_after = (first_day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    (request,) = tick(schedule, month_after.isoformat()).run_requests
    keys = [k for k in DAILY.get_partition_keys() if k[:7] == first_day.isoformat()[:7]][:3]
    tags = {**request.tags, RANGE_END_TAG: keys[-1]}  # at most three synthetic days: keep it fast
    result = run_defs.resolve_job_def("monthly_refresh_job").execute_in_process(
        tags=tags, asset_selection=[dg.AssetKey("raw_ping_dumps")], instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    materialized = sorted(e.partition for e in result.get_asset_materialization_events())
    assert materialized == keys
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == keys

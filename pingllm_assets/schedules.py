"""Monthly refresh: on the 1st of each month, the previous month's days and everything downstream of them.

One run per month. The daily assets use `BackfillPolicy.single_run()`, so the run covers the whole month as a
partition range (the same run tags `dagster asset materialize --partition-range` sets); the unpartitioned
assets downstream (sample, splits, records, model, evaluation) run once after them in the same run, and their
blocking checks stop what follows when they fail. Off by default: start it in the UI (Automation) with the
daemon running (`make dev`).
"""

import datetime as dt

import dagster as dg

# Dagster's run tags for a partition range (dagster._core.storage.tags.ASSET_PARTITION_RANGE_*_TAG):
# a run with both set materializes every partition in [start, end] of the selected partitioned assets.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
MONTH_TAG = "pingllm/month"

# The whole graph: raw_ping_dumps and measurements for the month's partitions, then the downstream assets
# (and every asset check on them).
refresh_job = dg.define_asset_job(
    "monthly_refresh_job",
    selection=dg.AssetSelection.all(),
    description="raw_ping_dumps and measurements for a range of days, then everything downstream.",
)


def previous_month(day: dt.date) -> tuple[dt.date, dt.date]:
    """First and last day of the month before `day`'s month."""
    last = day.replace(day=1) - dt.timedelta(days=1)
    return last.replace(day=1), last


def build_monthly_refresh_schedule(
    job,  # an asset job (dg.define_asset_job) over the partitioned assets and their downstream
    partitions_def: dg.TimeWindowPartitionsDefinition,
    name: str = "monthly_refresh",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """A schedule that, at 03:00 UTC on the 1st, requests one run over last month's defined daily partitions.

    Months with no defined partition (outside the configured start_day..end_day) are skipped with a
    reason naming the month; a month only partly inside the window runs the days that exist.
    """

    @dg.schedule(
        name=name,
        cron_schedule="0 3 1 * *",
        execution_timezone="UTC",
        job=job,
        default_status=default_status,
        description="On the 1st of each month: last month's raw_ping_dumps and measurements partitions "
        "(one run over the range), then measurement_sample, splits, probe_records, trained_model, evaluation.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        first, last = previous_month(when.date())
        month = first.strftime("%Y-%m")
        keys = [
            k
            for k in partitions_def.get_partition_keys(current_time=when)
            if first.isoformat() <= k <= last.isoformat()
        ]
        if not keys:
            defined = partitions_def.get_partition_keys()  # the whole configured window, as of now
            window = f"{defined[0]}..{defined[-1]}" if defined else "none"
            return dg.SkipReason(
                f"month {month} has no daily partitions (defined: {window}); "
                "set PINGLLM_START_DAY / PINGLLM_END_DAY (or start_day / end_day) to cover it"
            )
        expected = (last - first).days + 1
        if len(keys) < expected:
            context.log.info(f"month {month}: only {len(keys)} of {expected} days are defined partitions")
        return dg.RunRequest(
            run_key=f"monthly-refresh-{month}",
            tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1], MONTH_TAG: month},
        )

    return _schedule

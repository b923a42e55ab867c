"""Daily partitions over the configured window: one partition = one day of hourly dump files."""

import datetime as dt

import dagster as dg

from pingllm_assets.resources import default_settings
from pingllm_core.settings import ProjectSettings


def daily_partitions(settings: ProjectSettings) -> dg.DailyPartitionsDefinition:
    """One partition per day of settings.start_day..end_day (both included)."""
    end = dt.date.fromisoformat(settings.end_day) + dt.timedelta(days=1)
    return dg.DailyPartitionsDefinition(start_date=settings.start_day, end_date=end.isoformat())


# What the asset decorators declare. `definitions.build_defs` puts the partitions of the settings it is given on
# every partitioned asset and on the schedule, next to the resources made from the same settings.
DAILY = daily_partitions(default_settings())
# Every asset runs a whole partition range in one run, so `dg launch --partition-range` (and `dagster asset
# materialize`) and the demo work without a daemon; a backfill from the UI also becomes a single run.
SINGLE_RUN = dg.BackfillPolicy.single_run()

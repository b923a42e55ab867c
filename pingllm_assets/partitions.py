"""Daily partitions over the configured window: one partition = one day of hourly dump files."""

import datetime as dt

import dagster as dg

from pingllm_assets.resources import default_settings

_settings = default_settings()
DAILY = dg.DailyPartitionsDefinition(
    start_date=_settings.start_day,
    end_date=(dt.date.fromisoformat(_settings.end_day) + dt.timedelta(days=1)).isoformat(),
)
# Every asset runs a whole partition range in one run, so `dagster asset materialize --partition-range`
# and the demo work without a daemon; a backfill from the UI also becomes a single run.
SINGLE_RUN = dg.BackfillPolicy.single_run()

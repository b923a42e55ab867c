"""The pingllm asset graph: raw dumps -> measurements -> sample/splits -> records -> model -> evaluation."""

import dagster as dg

from pingllm_assets import distill, evaluation, measurements, poisoning, privacy, raw, records, train
from pingllm_assets.resources import PingllmSettings
from pingllm_assets.schedules import monthly_refresh, refresh_job

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(
        [raw, measurements, records, train, evaluation, privacy, poisoning, distill]
    ),
    asset_checks=dg.load_asset_checks_from_modules([evaluation]),
    jobs=[refresh_job],
    schedules=[monthly_refresh],
    resources={"pingllm": PingllmSettings()},
)

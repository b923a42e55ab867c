"""The pingllm asset graph: raw dumps -> measurements -> sample/splits -> records -> model -> evaluation."""

import dagster as dg

from pingllm_assets.data import measurements, records
from pingllm_assets.evaluation import evaluation
from pingllm_assets.experiments import distill, poisoning, privacy
from pingllm_assets.ingest import raw
from pingllm_assets.model import train
from pingllm_assets.partitions import daily_partitions
from pingllm_assets.resources import resources_for
from pingllm_assets.schedules import build_monthly_refresh_schedule, refresh_job
from pingllm_core.settings import ProjectSettings, load_settings

ASSET_MODULES = [raw, measurements, records, train, evaluation, privacy, poisoning, distill]


def build_defs(settings: ProjectSettings | None = None) -> dg.Definitions:
    """The graph with its daily partitions, schedule and resources all made from one ProjectSettings."""
    settings = settings or load_settings()
    daily = daily_partitions(settings)

    def on_window(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(partitions_def=daily) if spec.partitions_def else spec

    assets = [a.map_asset_specs(on_window) for a in dg.load_assets_from_modules(ASSET_MODULES)]
    return dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules([evaluation]),
        jobs=[refresh_job],
        schedules=[build_monthly_refresh_schedule(refresh_job, daily)],
        resources=resources_for(settings),
    )


defs = build_defs()

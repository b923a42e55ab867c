"""Stage 3: probe-centric ArrayRecord rows for each split (SPEC section 3)."""

import dagster as dg

from pingllm_assets.data.measurements import splits
from pingllm_assets.metadata import flat_numbers
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.data.records import RecordsConfig, write_probe_records
from pingllm_core.data.splits import SPLITS


class RecordsAssetConfig(dg.Config):
    """Row size cap and sharding."""

    max_row_bytes: int = 8_000_000  # a probe with more data is split into several rows (~8 MB)
    shards: int = 2  # ArrayRecord files per split


@dg.asset(deps=[splits], backfill_policy=SINGLE_RUN, group_name="data", kinds={"arrayrecord"})
def probe_records(
    context: dg.AssetExecutionContext, config: RecordsAssetConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Each split grouped by probe, sorted by time, written as sharded ArrayRecord rows with an index."""
    layout = pingllm.layout
    cfg = RecordsConfig(max_row_bytes=config.max_row_bytes, shards=config.shards)
    meta: dict = {"dagster/row_count": 0}  # probe rows over every split (each split's index.parquet)
    for name in SPLITS:
        summary = write_probe_records(
            layout.splits / f"{name}.parquet", layout.records / name, cfg, context.log.info
        )
        context.log.info(f"{name}: {summary.rows} rows, {summary.measurements} measurements")
        meta["dagster/row_count"] += summary.rows
        meta.update(flat_numbers(name, summary.__dict__))
    meta["path"] = dg.MetadataValue.path(str(layout.records))
    return dg.MaterializeResult(metadata=meta)

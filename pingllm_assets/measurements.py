"""Stage 2: dumps parsed to the measurement Parquet table, then a DuckDB sample and its splits."""

import datetime as dt
import json
import os

import dagster as dg
from dagster_duckdb import DuckDBResource

from pingllm_assets.metadata import MEASUREMENT_COLUMNS, flat_numbers
from pingllm_assets.partitions import DAILY, SINGLE_RUN
from pingllm_assets.raw import raw_ping_dumps
from pingllm_assets.resources import PingllmSettings
from pingllm_core import catalog as catalog_lib
from pingllm_core.parse import ParseConfig, parse_files
from pingllm_core.splits import CHECK_NAMES, SPLITS, SplitConfig, check_splits, make_sample, make_splits

DISTINCT_COUNTS = ("probes", "public_sources", "destinations")
# Column schemas in the definitions, so the catalog's Columns tab shows them before the first materialization.
COLUMNS = {"dagster/column_schema": MEASUREMENT_COLUMNS}


class ParseAssetConfig(dg.Config):
    """How dump lines become rows."""

    collapse: str = "packet"  # "packet" (one row per packet), or one row per result: "min" / "median"
    workers: int = 0  # parallel processes; 0 = one per core


class SampleAssetConfig(dg.Config):
    """Sample size and split shares (SPEC section 2)."""

    sample_rows: int = 300_000
    seed: int = 0
    heldout_probe_share: float = 0.10
    train_time_share: float = 0.8

    def to_core(self) -> SplitConfig:
        return SplitConfig(
            sample_rows=self.sample_rows,
            seed=self.seed,
            heldout_probe_share=self.heldout_probe_share,
            train_time_share=self.train_time_share,
        )


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    deps=[raw_ping_dumps],
    group_name="data",
    kinds={"parquet", "duckdb"},
    metadata=COLUMNS,
)
def measurements(
    context: dg.AssetExecutionContext,
    config: ParseAssetConfig,
    pingllm: PingllmSettings,
    catalog: DuckDBResource,
) -> dg.MaterializeResult:
    """One row per ping packet (SPEC schema); each day replaces its own Parquet slice."""
    layout = pingllm.layout
    cfg = ParseConfig(collapse=config.collapse, workers=config.workers or os.cpu_count() or 1)
    totals: dict[str, int] = {}
    truncated: list[str] = []
    rejects: list[dict] = []
    rows_per_s = []
    for key in context.partition_keys:
        day = dt.date.fromisoformat(key)
        files = sorted((layout.raw / key).glob(f"ping-{key}T*.bz2"))
        if not files:
            raise dg.Failure(
                f"no dump files for {day} under {layout.raw / key}: materialize raw_ping_dumps first"
            )
        out = layout.measurements / f"date={key}" / "part-0.parquet"
        summary = parse_files(files, out, cfg, progress=context.log.info)
        for k, v in summary.stats.items():
            if k in DISTINCT_COUNTS:  # distinct within a day: summing days would count a probe twice
                totals[f"{key}/{k}"] = int(v)
            else:
                totals[k] = totals.get(k, 0) + int(v)
        truncated += [str(p) for p in summary.truncated_files]
        rejects += summary.rejects[:20]
        rows_per_s.append(summary.rows_per_s)
        layout.rejects.mkdir(parents=True, exist_ok=True)
        (layout.rejects / f"date={key}.json").write_text(
            json.dumps({"stats": summary.stats, "rejects": summary.rejects}, indent=1, default=str)
        )
        context.log.info(f"{key}: {summary.stats.get('rows', 0)} rows from {len(files)} files")
    with catalog.get_connection() as con:  # the catalog's `measurements` view and `parse_rejects` table
        table_rows = catalog_lib.register_measurements(con, layout.measurements)
        rejected = catalog_lib.load_rejects(con, layout.rejects)
    meta: dict = {"dagster/row_count": totals.get("rows", 0)}  # rows this run wrote (a range: all its days)
    meta.update(flat_numbers("", totals))
    meta["table_rows"] = table_rows  # every parsed day so far: the catalog view `measurements`
    meta["rejected_lines"] = rejected
    meta["rows_per_s"] = round(sum(rows_per_s) / max(len(rows_per_s), 1), 1)
    meta["truncated_files"] = len(truncated)
    if truncated:
        context.log.warning(f"{len(truncated)} truncated dump files; rows before the damage were kept")
        meta["truncated_file_list"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in truncated))
    if rejects:
        meta["rejected_sample"] = dg.MetadataValue.json(rejects[:20])
    meta["path"] = dg.MetadataValue.path(str(layout.measurements))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    deps=[measurements],
    backfill_policy=SINGLE_RUN,
    group_name="data",
    kinds={"duckdb", "parquet"},
    metadata=COLUMNS,
)
def measurement_sample(
    context: dg.AssetExecutionContext,
    config: SampleAssetConfig,
    pingllm: PingllmSettings,
    catalog: DuckDBResource,
) -> dg.MaterializeResult:
    """A reproducible uniform sample of N measurements over every parsed day (DuckDB)."""
    layout = pingllm.layout
    stats = make_sample(str(layout.measurements / "*" / "*.parquet"), layout.splits, config.to_core())
    context.log.info(f"sampled {stats.rows} rows")
    with catalog.get_connection() as con:
        catalog_lib.register_splits(con, layout.splits, ["sample"])
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.rows,
            **flat_numbers("", stats.__dict__),
            "path": dg.MetadataValue.path(str(layout.splits / "sample.parquet")),
        }
    )


@dg.asset(
    deps=[measurement_sample],
    backfill_policy=SINGLE_RUN,
    group_name="data",
    kinds={"duckdb", "parquet"},
    metadata=COLUMNS,
    check_specs=[dg.AssetCheckSpec(name, asset="splits", blocking=True) for name in CHECK_NAMES],
)
def splits(
    context: dg.AssetExecutionContext,
    config: SampleAssetConfig,
    pingllm: PingllmSettings,
    catalog: DuckDBResource,
) -> dg.MaterializeResult:
    """train / heldout_probes / future splits of the sample (SPEC section 2), with data-quality checks."""
    layout = pingllm.layout
    summary = make_splits(layout.splits / "sample.parquet", layout.splits, config.to_core())
    checks = check_splits(layout.splits, summary.cutoff_epoch)
    failed = [c for c in checks if not c.passed]
    for c in failed:
        context.log.error(f"check {c.name} failed: {c.detail}")
    with catalog.get_connection() as con:  # views `train`, `heldout_probes`, `future` in the catalog
        catalog_lib.register_splits(con, layout.splits, SPLITS)
    meta: dict = {"dagster/row_count": sum(summary.stats[name].rows for name in SPLITS)}  # all three files
    meta.update(flat_numbers("", {k: v.__dict__ for k, v in summary.stats.items()}))
    meta.update(
        cutoff=summary.cutoff or "",
        heldout_probes=summary.heldout_probes,
        future_unseen_pair_rows=summary.future_unseen_pair_rows,
        path=dg.MetadataValue.path(str(layout.splits)),
    )
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(check_name=c.name, passed=c.passed, metadata={"detail": c.detail})
            for c in checks
        ],
    )

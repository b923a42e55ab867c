"""Stage 2: dumps parsed to the measurement Parquet table, then a DuckDB sample and its splits."""

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pingllm_assets.ingest.raw import day_status, hour_ranges, raw_ping_dumps
from pingllm_assets.metadata import MEASUREMENT_COLUMNS, flat_numbers
from pingllm_assets.partitions import DAILY, SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.data import catalog as catalog_lib
from pingllm_core.data.splits import CHECK_NAMES, SPLITS, SplitConfig, check_splits, make_sample, make_splits
from pingllm_core.ingest.download import DownloadReport, read_day_report
from pingllm_core.ingest.parse import ParseSummary, parse_files
from pingllm_core.ingest.parse_block import ParseConfig

CHECK_PARSED = "every_file_parsed"  # blocking: a file that could not be parsed stops the sample and splits
# Column schemas in the definitions, so the catalog's Columns tab shows them before the first materialization.
COLUMNS = {"dagster/column_schema": MEASUREMENT_COLUMNS}


class ParseAssetConfig(dg.Config):
    """How dump lines become rows."""

    collapse: str = "packet"  # "packet" (one row per packet), or one row per result: "min" / "median"
    workers: int = 0  # parallel processes; 0 = one per core


class SampleAssetConfig(dg.Config):
    """Sample size (SPEC section 2): the sample's only; `splits` splits whatever sample.parquet holds."""

    sample_rows: int = 900_000  # the demo trains on under 2 epochs of its sample
    seed: int = 0  # drives which rows are drawn

    def to_core(self) -> SplitConfig:
        return SplitConfig(**self.model_dump())


class SplitsAssetConfig(dg.Config):
    """Split shares (SPEC section 2)."""

    seed: int = 0  # drives which probes are held out
    heldout_probe_share: float = 0.10
    train_time_share: float = 0.8

    def to_core(self) -> SplitConfig:
        return SplitConfig(**self.model_dump())


def _day_status(files: int, report: DownloadReport | None) -> str:
    """Why a day's slice holds what it holds, in one line (from the files and the raw asset's download report)."""
    if report is None:  # dumps written or copied without a download (the synthetic source)
        return "complete"
    status = day_status(report)
    if not files:
        return f"{status}: the day is materialized empty" if status.startswith("empty") else status
    return status


def _day_metadata(summary: ParseSummary, files: int, report: DownloadReport | None) -> dict:
    """Metadata of one day's partition: the parser's counts, damage, failures and the day's status."""
    meta: dict = flat_numbers("", summary.stats)
    meta.update(
        files=files,
        status=_day_status(files, report),
        truncated_files=len(summary.truncated_files),
        failed_files=len(summary.failed),
        rows_per_s=round(summary.rows_per_s, 1),
    )
    if report is not None:
        meta["hours_missing"] = len(report.missing_hours)
        meta["missing_hours"] = hour_ranges(report.missing_hours)
    if summary.truncated_files:
        listed = [f"- {Path(p).name}: {summary.errors.get(p, 'damaged')}" for p in summary.truncated_files]
        meta["truncated_file_list"] = dg.MetadataValue.md("\n".join(listed))
    if summary.failed:
        meta["failed_file_list"] = dg.MetadataValue.md("\n".join(f"- {e}" for e in summary.failed.values()))
    if summary.rejects:
        meta["rejected_sample"] = dg.MetadataValue.json(summary.rejects[:20])
    return meta


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    deps=[raw_ping_dumps],
    group_name="data",
    kinds={"parquet", "duckdb"},
    metadata=COLUMNS,
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_PARSED,
            asset="measurements",
            blocking=True,
            description="Every dump file was parsed to its end (damaged files keep their lines before the damage).",
        )
    ],
)
def measurements(
    context: dg.AssetExecutionContext,
    config: ParseAssetConfig,
    pingllm: PingllmSettings,
    catalog: DuckDBResource,
) -> dg.MaterializeResult:
    """One row per ping packet (SPEC schema); each day replaces its own Parquet slice, empty for a day that the
    server does not have."""
    layout = pingllm.layout
    cfg = ParseConfig(collapse=config.collapse, workers=config.workers or os.cpu_count() or 1)
    days = {key: sorted((layout.raw / key).glob(f"ping-{key}T*.bz2")) for key in context.partition_keys}
    reports = {key: read_day_report(layout.raw, dt.date.fromisoformat(key)) for key in days}
    # Checked before any parsing, so that a run either records every day or none.
    never = [key for key, files in days.items() if not files and reports[key] is None]
    if never:
        raise dg.Failure(
            f"no dump files and no download report for {len(never)} days ({', '.join(never[:5])}"
            f"{', ...' if len(never) > 5 else ''}) under {layout.raw}: materialize raw_ping_dumps for them first",
            allow_retries=False,
        )
    failed: dict[str, str] = {}
    rows, seconds = 0, 0.0
    for key, files in days.items():
        out = layout.measurements / f"date={key}" / "part-0.parquet"
        summary = parse_files(files, out, cfg, progress=context.log.info)  # no files: an empty slice
        layout.rejects.mkdir(parents=True, exist_ok=True)
        (layout.rejects / f"date={key}.json").write_text(
            json.dumps({"stats": summary.stats, "rejects": summary.rejects}, indent=1, default=str)
        )
        day_meta = _day_metadata(summary, len(files), reports[key])
        context.add_asset_metadata(day_meta, partition_key=key)
        failed.update(summary.failed)
        rows, seconds = rows + summary.rows, seconds + summary.seconds
        context.log.info(f"{key}: {summary.rows} rows from {len(files)} files ({day_meta['status']})")
        if summary.truncated_files:
            context.log.warning(
                f"{key}: {len(summary.truncated_files)} damaged dump files; rows before the damage kept"
            )
    for error in failed.values():
        context.log.error(f"could not parse {error}")
    with catalog.get_connection() as con:  # the catalog's `measurements` view and `parse_rejects` table
        table_rows = catalog_lib.register_measurements(con, layout.measurements)
        rejected = catalog_lib.load_rejects(con, layout.rejects)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,  # rows this run wrote (a range: all its days)
            "table_rows": table_rows,  # every parsed day so far: the catalog view `measurements`
            "rejected_lines": rejected,
            "days": len(days),
            "run_rows": rows,
            "run_rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
            "path": dg.MetadataValue.path(str(layout.measurements)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_PARSED,
                passed=not failed,
                metadata={
                    "failed_files": len(failed),
                    "detail": "\n".join(list(failed.values())[:50]) or "every dump file was parsed",
                },
            )
        ],
    )


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
    config: SplitsAssetConfig,
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

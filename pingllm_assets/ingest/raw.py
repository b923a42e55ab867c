"""Stage 1: raw hourly ping dumps, from RIPE Atlas over HTTP or from the embedded synthetic internet."""

import datetime as dt
import time
from collections import Counter

import dagster as dg

from pingllm_assets.metadata import dir_bytes
from pingllm_assets.partitions import DAILY, SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.ingest.download import (
    STATUSES,
    DownloadConfig,
    DownloadReport,
    HostUnreachable,
    RetryBudget,
    download_day,
)
from pingllm_core.ingest.synth import SynthConfig, SyntheticInternet

CHECK_DOWNLOADED = "every_hour_downloaded_or_missing"  # blocking: a failed download stops the parse


class RawDumpsConfig(dg.Config):
    """Download options (RIPE source only)."""

    retries: int = 4  # extra attempts per hourly file before it is reported failed
    timeout_s: float = 60.0  # seconds without a received byte before an attempt fails
    connect_timeout_s: float = 10.0  # seconds to open a connection
    backoff_s: float = 2.0  # first wait between attempts (s); doubles each time
    # seconds of failed attempts and waits in a row before failures are final; a host that cannot be reached
    # or refuses us fails the asset after about this long (plus one connect timeout), not after hours
    retry_budget_s: float = 30.0


def synth_config(settings) -> SynthConfig:
    """The synthetic internet for these settings: one object for the whole window, so days agree."""
    return SynthConfig(
        seed=settings.synth_seed,
        n_probes=settings.synth_probes,
        start_day=settings.start_day,
        days=len(settings.days),
    )


def hour_ranges(hours: list[int]) -> str:
    """Hours as compact ranges: [0, 1, 2, 5, 7, 8] -> '00-02, 05, 07-08'."""
    runs: list[list[int]] = []
    for h in sorted(hours):
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    return ", ".join(f"{a:02d}" if a == b else f"{a:02d}-{b:02d}" for a, b in runs)


def day_status(report: DownloadReport) -> str:
    """One line on what a day's download holds, for its partition's metadata."""
    counts, n = report.counts, len(report.files)
    missing = report.missing_hours
    if counts["failed"]:
        return f"incomplete: {counts['failed']} of {n} hours failed to download (see failed_files)"
    if len(missing) == n:
        return f"empty: the server has none of the {n} hours of {report.day} (HTTP 404)"
    if missing:
        return f"partial: the server has no dump for hours {hour_ranges(missing)} (HTTP 404)"
    return "complete"


def _day_metadata(report: DownloadReport, day_dir_bytes: int) -> dict:
    """Metadata of one day's partition: files per status, retries, missing hours and why."""
    meta: dict = {f"files_{s}": n for s, n in report.counts.items()}
    meta.update(
        files=len(report.paths),
        retries=report.retries,
        hours_missing=len(report.missing_hours),
        missing_hours=hour_ranges(report.missing_hours),
        status=day_status(report),
        bytes=day_dir_bytes,
    )
    for status, key in (("failed", "failed_files"), ("truncated", "truncated_files")):
        listed = [f"- {f.url}: {f.error}" for f in report.files if f.status == status]
        if listed:
            meta[key] = dg.MetadataValue.md("\n".join(listed))
    return meta


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    group_name="data",
    kinds={"bzip2"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_DOWNLOADED,
            asset="raw_ping_dumps",
            blocking=True,
            description="Every hourly file is on disk, or the server has none (404); a failed download blocks.",
        )
    ],
)
def raw_ping_dumps(
    context: dg.AssetExecutionContext, config: RawDumpsConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Hourly bz2 NDJSON ping dumps for each day, in the RIPE Atlas daily-dump layout."""
    settings = pingllm.settings()
    raw_dir = settings.layout.raw
    days = [dt.date.fromisoformat(k) for k in context.partition_keys]
    t0 = time.perf_counter()
    meta: dict = {
        "source": settings.source,
        "days": len(days),
        "raw_dir": dg.MetadataValue.path(str(raw_dir)),
    }
    failed: list[str] = []
    if settings.source == "synthetic":
        net = SyntheticInternet.build(synth_config(settings))
        settings.layout.ground_truth.parent.mkdir(parents=True, exist_ok=True)
        net.save(settings.layout.ground_truth)
        for i, day in enumerate(days, 1):
            files = net.write_day(raw_dir, day)
            day_meta = {
                "files": len(files),
                "status": "complete",
                "bytes": dir_bytes(raw_dir / day.isoformat()),
            }
            context.add_asset_metadata(day_meta, partition_key=day.isoformat())
            context.log.info(
                f"synthetic day {day} written ({i}/{len(days)}, {time.perf_counter() - t0:.1f}s)"
            )
        meta["ground_truth"] = dg.MetadataValue.path(str(settings.layout.ground_truth))
    else:
        cfg = DownloadConfig(
            base_url=settings.ripe_base_url,
            retries=config.retries,
            timeout=config.timeout_s,
            connect_timeout=config.connect_timeout_s,
            backoff_s=config.backoff_s,
            retry_budget_s=config.retry_budget_s,
        )
        budget = RetryBudget(cfg.retry_budget_s)  # one for the run: a dead host is given up on once
        totals: Counter = Counter()
        for day in days:
            try:
                report = download_day(day, raw_dir, cfg, progress=context.log.info, budget=budget)
            except HostUnreachable as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from None
            day_meta = _day_metadata(report, dir_bytes(raw_dir / day.isoformat()))
            context.add_asset_metadata(day_meta, partition_key=day.isoformat())
            totals.update({k: v for k, v in day_meta.items() if isinstance(v, int)})
            failed += [f"{r.url}: {r.error}" for r in report.files if r.status == "failed"]
            if day_meta["status"] != "complete":
                context.log.warning(f"{day}: {day_meta['status']}")
        context.log.info(
            f"{len(days)} days: "
            + ", ".join(f"{totals[f'files_{s}']} {s}" for s in STATUSES)
            + f", {totals['retries']} retries"
        )
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_DOWNLOADED,
                passed=not failed,
                metadata={
                    "failed_files": len(failed),
                    "detail": "\n".join(failed[:50]) or "every hour is on disk or missing on the server",
                },
            )
        ],
    )

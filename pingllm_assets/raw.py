"""Stage 1: raw hourly ping dumps, from RIPE Atlas over HTTP or from the embedded synthetic internet."""

import datetime as dt
import time

import dagster as dg

from pingllm_assets.metadata import dir_bytes
from pingllm_assets.partitions import DAILY, SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.download import DownloadConfig, download_day
from pingllm_core.synth import SynthConfig, SyntheticInternet


class RawDumpsConfig(dg.Config):
    """Download options (RIPE source only)."""

    retries: int = 4  # attempts per hourly file before it is reported failed
    timeout_s: float = 60.0  # per HTTP request


def synth_config(settings) -> SynthConfig:
    """The synthetic internet for these settings: one object for the whole window, so days agree."""
    return SynthConfig(
        seed=settings.synth_seed,
        n_probes=settings.synth_probes,
        start_day=settings.start_day,
        days=len(settings.days),
    )


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=SINGLE_RUN,
    group_name="data",
    kinds={"bzip2"},
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
    if settings.source == "synthetic":
        net = SyntheticInternet.build(synth_config(settings))
        settings.layout.ground_truth.parent.mkdir(parents=True, exist_ok=True)
        net.save(settings.layout.ground_truth)
        files = []
        for i, day in enumerate(days, 1):
            files += net.write_day(raw_dir, day)
            context.log.info(
                f"synthetic day {day} written ({i}/{len(days)}, {time.perf_counter() - t0:.1f}s)"
            )
        meta["files"] = len(files)
        meta["ground_truth"] = dg.MetadataValue.path(str(settings.layout.ground_truth))
    else:
        cfg = DownloadConfig(
            base_url=settings.ripe_base_url, retries=config.retries, timeout=config.timeout_s
        )
        failed = []
        for day in days:
            report = download_day(day, raw_dir, cfg, progress=context.log.info)
            for status, n in report.counts().items():
                meta[f"files_{status}"] = meta.get(f"files_{status}", 0) + n
            failed += [f"{r.url}: {r.error}" for r in report.files if r.status == "failed"]
        if failed:
            meta["failed_files"] = dg.MetadataValue.md("\n".join(f"- {f}" for f in failed))
            context.log.warning(f"{len(failed)} hourly files failed to download; see metadata")
    meta["bytes"] = sum(
        dir_bytes(raw_dir / d.isoformat()) for d in days if (raw_dir / d.isoformat()).exists()
    )
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return dg.MaterializeResult(metadata=meta)

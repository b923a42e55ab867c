"""The raw and measurements assets in process: a failed download or an unparseable file fails a blocking check
with the file and the reason in metadata, while every day is still recorded."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pingllm_assets.data.measurements import CHECK_PARSED, measurements
from pingllm_assets.ingest.raw import CHECK_DOWNLOADED, day_status, hour_ranges, raw_ping_dumps
from pingllm_assets.resources import resources_for
from pingllm_core.ingest.download import DownloadReport, FileResult
from pingllm_core.settings import ProjectSettings

RIPE = Path(__file__).resolve().parent / "data" / "ripe-public"  # public RIPE Atlas samples
WEINERAN = RIPE / "weineran" / "2015-01-31" / "ping-2015-01-31T0000.bz2"
DAY = "2024-07-01"  # inside the default window, which the partitions are built from


def _settings(root: Path, base_url: str = "http://127.0.0.1:9") -> ProjectSettings:
    return ProjectSettings(data_root=root, source="ripe", start_day=DAY, end_day=DAY, ripe_base_url=base_url)


def _materialize(asset, root: Path, run_config: dict | None = None, base_url: str = "http://127.0.0.1:9"):
    return dg.materialize(
        [asset],
        partition_key=DAY,
        resources=resources_for(_settings(root, base_url)),
        run_config=run_config or {},
        raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )


def _day_metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert event.partition == DAY
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_hours_are_written_as_ranges_and_a_day_status_says_why():
    assert hour_ranges([0, 1, 2, 5, 7, 8, 23]) == "00-02, 05, 07-08, 23" and hour_ranges([]) == ""
    files = [
        FileResult(f"u{h}", f"/r/ping-{DAY}T{h:02d}00.bz2", "missing" if h else "downloaded")
        for h in range(3)
    ]
    assert (
        day_status(DownloadReport(DAY, files)) == "partial: the server has no dump for hours 01-02 (HTTP 404)"
    )
    files[0].status = "failed"
    assert day_status(DownloadReport(DAY, files)).startswith("incomplete: 1 of 3 hours failed")


def test_a_download_that_keeps_failing_fails_the_blocking_check_and_the_day_is_recorded(
    tmp_path, dump_server
):
    dump_server.files[f"/{DAY}/ping-{DAY}T0000.bz2"] = WEINERAN.read_bytes()
    dump_server.statuses[f"/{DAY}/ping-{DAY}T0300.bz2"] = [500] * 10
    config = {"retries": 2, "backoff_s": 0.01, "retry_budget_s": 5.0}
    result = _materialize(
        raw_ping_dumps, tmp_path, {"ops": {"raw_ping_dumps": {"config": config}}}, dump_server.base_url
    )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_DOWNLOADED and not check.passed
    assert (
        check.metadata["failed_files"].value == 1 and "T0300.bz2: HTTP 500" in check.metadata["detail"].value
    )
    meta = _day_metadata(result, "raw_ping_dumps")
    assert (meta["files_downloaded"], meta["files_missing"], meta["files_failed"]) == (1, 22, 1)
    assert meta["retries"] == 2 and meta["status"].startswith("incomplete: 1 of 24 hours failed")
    assert "T0300.bz2" in meta["failed_files"]


def test_an_unparseable_dump_fails_the_blocking_check_with_the_file_and_the_reason(tmp_path):
    day_dir = tmp_path / "raw" / DAY
    day_dir.mkdir(parents=True)
    shutil.copy(WEINERAN, day_dir / f"ping-{DAY}T0000.bz2")
    (day_dir / f"ping-{DAY}T0100.bz2").mkdir()  # not a file: it cannot be read
    result = _materialize(measurements, tmp_path, {"ops": {"measurements": {"config": {"workers": 1}}}})
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_PARSED and not check.passed
    assert f"ping-{DAY}T0100.bz2: IsADirectoryError" in check.metadata["detail"].value
    meta = _day_metadata(result, "measurements")  # the day is recorded, with its rows and the failure
    assert (
        meta["rows"] == 297 and meta["failed_files"] == 1 and "IsADirectoryError" in meta["failed_file_list"]
    )
    (failure,) = result.get_step_failure_events()
    assert "blocking asset check failed" in failure.step_failure_data.error.message


def test_a_day_never_downloaded_is_a_clear_failure_not_an_empty_day(tmp_path):
    result = _materialize(measurements, tmp_path)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert f"no dump files and no download report for 1 days ({DAY})" in message
    assert "materialize raw_ping_dumps for them first" in message
    assert not (tmp_path / "parquet").exists()  # nothing half done


@pytest.mark.parametrize("hours_on_server", [0, 1])
def test_a_day_the_server_lacks_is_materialized_empty_with_its_reason(tmp_path, dump_server, hours_on_server):
    if hours_on_server:
        dump_server.files[f"/{DAY}/ping-{DAY}T0700.bz2"] = WEINERAN.read_bytes()
    raw = _materialize(raw_ping_dumps, tmp_path, base_url=dump_server.base_url)
    assert raw.success
    parsed = _materialize(measurements, tmp_path, {"ops": {"measurements": {"config": {"workers": 1}}}})
    assert parsed.success
    meta = _day_metadata(parsed, "measurements")
    assert meta["rows"] == 297 * hours_on_server and meta["hours_missing"] == 24 - hours_on_server
    if hours_on_server:
        assert meta["status"] == "partial: the server has no dump for hours 00-06, 08-23 (HTTP 404)"
    else:
        assert meta["status"].startswith(
            "empty: the server has none of the 24 hours of 2024-07-01 (HTTP 404)"
        )
    assert (tmp_path / "parquet" / "measurements" / f"date={DAY}" / "part-0.parquet").exists()

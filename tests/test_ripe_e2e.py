"""ripe mode end to end: the Dagster CLI downloads real RIPE Atlas dumps from a loopback server over a window with
missing days and hours and injected faults, parses them, and records every day with its reasons in the instance.

The real samples (tests/data/ripe-public, public RIPE Atlas data) are served under days of one short window; the
parser does not look at the date in a file's URL, so each day's rows must equal its sample's independent manifest.
"""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from pingllm_core.ingest.parse import parse_file
from tests.helpers.dagster_home import make_dagster_home
from tests.helpers.ripe_server import serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RIPE = Path(__file__).resolve().parent / "data" / "ripe-public"
ASSETS = "raw_ping_dumps,measurements"
START, END = "2022-12-14", "2022-12-18"
MISSING_DAY = "2022-12-14"  # every hour 404
# day -> {hour: sample file}; each day's other hours are 404 on the server
SAMPLES = {
    "2022-12-15": {16: RIPE / "starlink" / "2022-12-15" / "ping-2022-12-15T1600.bz2"},  # cut mid-body, resumed
    "2022-12-16": {20: RIPE / "v6-first" / "2019-04-24" / "ping-2019-04-24T2000.bz2",  # 500, 503, then OK
                   21: RIPE / "v6-first" / "2019-04-24" / "ping-2019-04-24T2100.bz2"},
    "2022-12-17": {0: RIPE / "weineran" / "2015-01-31" / "ping-2015-01-31T0000.bz2"},
}  # fmt: skip
MANIFESTS = {"2022-12-15": "starlink", "2022-12-16": "v6-first", "2022-12-17": "weineran"}
FAULT_DAY = (
    "2022-12-18"  # weineran with one line of invalid UTF-8 at 00, and a permanently truncated file at 05
)
BAD_LINE = 5  # 0-based line of the weineran sample that gets an invalid byte (a used result with 3 packets)
RAW_CONFIG = {
    "retries": 3,
    "backoff_s": 0.05,
    "retry_budget_s": 10.0,
    "timeout_s": 20.0,
    "connect_timeout_s": 5.0,
}


def _url(day: str, hour: int) -> str:
    return f"/{day}/ping-{day}T{hour:02d}00.bz2"


def _fault_files() -> tuple[bytes, bytes]:
    """(weineran with an invalid UTF-8 byte in one line's msm_name, v6-first 20:00 cut at 60% of its bytes)."""
    lines = bz2.decompress((SAMPLES["2022-12-17"][0]).read_bytes()).split(b"\n")
    assert b'"msm_name":"Ping"' in lines[BAD_LINE]
    lines[BAD_LINE] = lines[BAD_LINE].replace(b'"msm_name":"Ping"', b'"msm_name":"P\xefng"')
    whole = SAMPLES["2022-12-16"][20].read_bytes()
    return bz2.compress(b"\n".join(lines)), whole[: len(whole) * 3 // 5]


def _materialize(
    root: Path, base_url: str, partition_range: str, raw_config: dict
) -> tuple[subprocess.CompletedProcess, float]:
    """`dagster asset materialize` of the raw and measurements assets, in ripe mode, against a temp instance."""
    home = make_dagster_home(root)
    config = root / "ripe.toml"
    config.write_text(f'source = "ripe"\nstart_day = {START}\nend_day = {END}\n'  # TOML dates, unquoted
                      f'ripe_base_url = "{base_url}"\ndata_root = "{root / "data"}"\n')  # fmt: skip
    env = {**os.environ, "DAGSTER_HOME": str(home), "PINGLLM_CONFIG": str(config)}
    for name in (
        "PINGLLM_DATA_ROOT",
        "PINGLLM_SOURCE",
        "PINGLLM_START_DAY",
        "PINGLLM_END_DAY",
        "PINGLLM_RIPE_BASE_URL",
    ):
        env.pop(name, None)
    run_config = {
        "ops": {"raw_ping_dumps": {"config": raw_config}, "measurements": {"config": {"workers": 1}}},
        "execution": {
            "config": {"in_process": {}}
        },  # one process: no step subprocess to import the graph again
    }
    cmd = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "pingllm_assets.definitions",
           "--select", ASSETS, "--partition-range", partition_range, "--config-json", json.dumps(run_config)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def ripe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ripe")
    bad_utf8, truncated = _fault_files()
    with serving() as srv:
        for day, hours in SAMPLES.items():
            for hour, path in hours.items():
                srv.files[_url(day, hour)] = path.read_bytes()
        srv.files[_url(FAULT_DAY, 0)] = bad_utf8
        srv.files[_url(FAULT_DAY, 5)] = truncated
        srv.cut_once[_url("2022-12-15", 16)] = 50_000  # of 128,033 bytes
        srv.statuses[_url("2022-12-16", 20)] = [500, 503]
        proc, seconds = _materialize(root, srv.base_url, f"{START}...{END}", RAW_CONFIG)
        requests = list(srv.requests)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, proc.stdout + proc.stderr, requests, truncated, seconds


def _metadata(home: Path, asset: str, day: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A day's materialization metadata, read back from the run's Dagster instance."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1
        ).records
        assert records, f"{asset} {day} was not materialized"
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _rows(root: Path, day: str) -> int:
    parts = sorted((root / "data" / "parquet" / "measurements" / f"date={day}").glob("part-*.parquet"))
    assert parts, day
    return sum(pq.read_metadata(p).num_rows for p in parts)


def test_every_day_is_materialized_and_rows_equal_the_manifests(ripe_run, monkeypatch):
    root, _, _, _, _ = ripe_run
    home = root / "dagster_home"
    for day, sample in MANIFESTS.items():
        manifest = json.loads((RIPE / sample / "manifest.json").read_text())
        assert _rows(root, day) == manifest["rows"], day
        meta = _metadata(home, "measurements", day, monkeypatch)
        for key in ("rows", "rows_ok", "rows_failed", "results", "probes", "public_sources", "destinations"):
            assert meta[key] == manifest[key], (day, key)
        assert (
            meta["failed_files"] == 0 and meta["truncated_files"] == 0 and meta["files"] == len(SAMPLES[day])
        )


def test_missing_days_and_hours_are_empty_with_the_reason_not_failures(ripe_run, monkeypatch):
    root, _, requests, _, _ = ripe_run
    home = root / "dagster_home"
    raw = _metadata(home, "raw_ping_dumps", MISSING_DAY, monkeypatch)
    assert (
        raw["files"] == 0 and raw["files_missing"] == raw["hours_missing"] == 24 and raw["files_failed"] == 0
    )
    assert raw["status"].startswith("empty: the server has none of the 24 hours") and "404" in raw["status"]
    parsed = _metadata(home, "measurements", MISSING_DAY, monkeypatch)
    assert parsed["rows"] == 0 and parsed["files"] == 0 and parsed["status"].startswith("empty")
    assert _rows(root, MISSING_DAY) == 0  # an empty slice, not an absent one
    starlink = _metadata(home, "raw_ping_dumps", "2022-12-15", monkeypatch)
    assert starlink["hours_missing"] == 23 and starlink["missing_hours"] == "00-15, 17-23"
    assert starlink["status"] == "partial: the server has no dump for hours 00-15, 17-23 (HTTP 404)"
    assert _metadata(home, "measurements", "2022-12-15", monkeypatch)["missing_hours"] == "00-15, 17-23"
    assert sum(1 for _, _, status in requests if status == 404) == 5 * 24 - 6  # each missing hour asked once


def test_a_cut_connection_is_resumed_and_server_errors_are_retried(ripe_run, monkeypatch):
    root, log, requests, _, _ = ripe_run
    home = root / "dagster_home"
    cut = [(rng, status) for path, rng, status in requests if path == _url("2022-12-15", 16)]
    assert cut[0] == (None, 200) and cut[1][1] == 206 and cut[1][0].startswith("bytes=")
    assert 0 < int(cut[1][0].removeprefix("bytes=").rstrip("-")) <= 50_000
    raw = _metadata(home, "raw_ping_dumps", "2022-12-15", monkeypatch)
    assert raw["files_resumed"] == 1 and raw["files_downloaded"] == 0 and raw["retries"] == 1
    flaky = [status for path, _, status in requests if path == _url("2022-12-16", 20)]
    assert flaky == [500, 503, 200]
    raw = _metadata(home, "raw_ping_dumps", "2022-12-16", monkeypatch)
    assert raw["files_downloaded"] == 2 and raw["retries"] == 2 and raw["files_failed"] == 0
    assert "HTTP 500" in log and "HTTP 503" in log and "retrying in" in log  # each retry is logged


def test_a_truncated_file_keeps_its_readable_part_and_a_bad_byte_costs_one_line(ripe_run, monkeypatch):
    root, _, _, truncated, _ = ripe_run
    home = root / "dagster_home"
    raw = _metadata(home, "raw_ping_dumps", FAULT_DAY, monkeypatch)
    assert raw["files_truncated"] == 1 and raw["files_downloaded"] == 1 and raw["files_failed"] == 0
    assert "ping-2022-12-18T0500.bz2" in raw["truncated_files"]
    meta = _metadata(home, "measurements", FAULT_DAY, monkeypatch)
    assert meta["truncated_files"] == 1 and meta["failed_files"] == 0 and meta["rejected_bad_utf8"] == 1
    assert "ping-2022-12-18T0500.bz2" in meta["truncated_file_list"]
    assert (
        meta["rejected_sample"][0]["reason"] == "bad_utf8"
        and "P\\xefng" in meta["rejected_sample"][0]["text"]
    )
    # The readable part: exactly the rows of the whole file's first lines.
    cut = root / "cut.bz2"
    cut.write_bytes(truncated)
    kept = parse_file(cut).table
    whole = parse_file(SAMPLES["2022-12-16"][20]).table
    assert 0 < kept.num_rows < whole.num_rows and whole.slice(0, kept.num_rows).equals(kept)
    weineran = json.loads((RIPE / "weineran" / "manifest.json").read_text())["rows"]
    line = json.loads(bz2.decompress(SAMPLES["2022-12-17"][0].read_bytes()).split(b"\n")[BAD_LINE])
    lost = sum(1 for packet in line["result"] if "dup" not in packet)
    assert lost == 3 and _rows(root, FAULT_DAY) == weineran - lost + kept.num_rows
    parts = sorted((root / "data" / "parquet" / "measurements" / f"date={FAULT_DAY}").glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [weineran - lost, kept.num_rows]


def test_the_run_is_quick(ripe_run):
    *_, seconds = ripe_run
    assert seconds < 120, seconds


def test_an_unreachable_host_fails_the_raw_asset_fast_with_one_message(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening: every connection is refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    budget = {**RAW_CONFIG, "retries": 4, "backoff_s": 0.2, "retry_budget_s": 1.0}
    proc, seconds = _materialize(tmp_path, dead, f"{START}...{END}", budget)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    message = f"cannot download from {dead}: ConnectionError: Failed to establish a new connection"
    assert message in log and "check ripe_base_url and the network" in log
    assert seconds < 60, seconds  # the CLI's own start included; the downloads give up after about 1 s
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        days = [f"2022-12-{d}" for d in range(14, 19)]
        window = dg.DailyPartitionsDefinition(start_date=START, end_date="2022-12-19")
        status = instance.get_status_by_partition(dg.AssetKey("raw_ping_dumps"), days, window)
        assert status == dict.fromkeys(days, dg.AssetPartitionStatus.FAILED)
        assert instance.get_latest_materialization_event(dg.AssetKey("raw_ping_dumps")) is None
        assert instance.get_latest_materialization_event(dg.AssetKey("measurements")) is None

"""Downloader behaviour against a real HTTP server on 127.0.0.1 serving real-format bz2 dumps."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pingllm_core.ingest.download import (
    DownloadConfig,
    HostUnreachable,
    RetryBudget,
    download_day,
    download_file,
    dump_url,
    read_day_report,
    verify_bz2,
)

RIPE = Path(__file__).resolve().parent / "data" / "ripe-public"  # public RIPE Atlas samples
DAY = dt.date(2015, 1, 31)
REAL = (RIPE / "weineran" / str(DAY) / f"ping-{DAY}T0000.bz2").read_bytes()


class _Server(ThreadingHTTPServer):
    """Serves `files` (path -> bytes) with Range support and scripted faults."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: list[int] = []  # per request, in order: send only this many body bytes
        self.corrupt_times = 0  # serve a damaged body this many times first
        self.corrupt_varies = (
            False  # damage each response differently (a flaky transfer, not the server's file)
        )
        self.statuses: list[int] = []  # per request, in order: answer with this HTTP status instead
        self.bad_content_range = False  # answer a Range request from byte 0 with 206
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if srv.statuses:
            self.send_error(srv.statuses.pop(0))
            return
        if body is None:
            self.send_error(404)
            return
        if srv.corrupt_times > 0:
            srv.corrupt_times -= 1
            key = (len(srv.requests) if srv.corrupt_varies else 0x5A) & 0xFF or 1
            body = body[:100] + bytes(b ^ key for b in body[100:200]) + body[200:]
        start = int(rng.split("=")[1].split("-")[0]) if rng and srv.honour_range else 0
        self.send_response(206 if start else 200)
        if start:
            first = 0 if srv.bad_content_range else start
            self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cut_after:
            payload = payload[: srv.cut_after.pop(0)]
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = _Server()
    srv.files[f"/{DAY}/ping-{DAY}T0000.bz2"] = REAL
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(srv: _Server, **over) -> DownloadConfig:
    return DownloadConfig(**({"base_url": f"http://127.0.0.1:{srv.server_port}", "timeout": 5.0,
                              "retries": 2, "backoff_s": 0.01, "chunk_bytes": 512} | over))  # fmt: skip


def test_downloads_a_day_and_skips_it_when_complete(server: _Server, tmp_path: Path) -> None:
    report = download_day(DAY, tmp_path, _cfg(server), hours=[0])
    dest = tmp_path / str(DAY) / f"ping-{DAY}T0000.bz2"
    assert report.counts["downloaded"] == 1 and dest.read_bytes() == REAL and report.bytes == len(REAL)
    assert not dest.with_name(dest.name + ".part").exists()
    again = download_day(DAY, tmp_path, _cfg(server), hours=[0])
    assert again.counts["skipped"] == 1 and again.bytes == 0 and len(server.requests) == 1


def test_interrupted_transfer_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.cut_after = [1500]  # the first response stops after 1500 bytes
    url = dump_url(_cfg(server).base_url, DAY, 0)
    res = download_file(url, tmp_path / "f.bz2", _cfg(server))
    assert res.status == "resumed" and (tmp_path / "f.bz2").read_bytes() == REAL
    # Resumes from every byte the cut response delivered.
    assert server.requests[1][1] == "bytes=1500-" and res.attempts == 2 and res.bytes == len(REAL)


def test_partial_file_from_an_earlier_run_resumes(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "f.bz2.part").write_bytes(REAL[:1000])
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "resumed" and res.bytes == len(REAL) - 1000
    assert (tmp_path / "f.bz2").read_bytes() == REAL and server.requests[0][1] == "bytes=1000-"


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    server.honour_range = False
    (tmp_path / "f.bz2.part").write_bytes(REAL[:1000])
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "downloaded" and (tmp_path / "f.bz2").read_bytes() == REAL


def test_truncated_file_on_disk_is_detected_and_refetched(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / str(DAY) / f"ping-{DAY}T0000.bz2"
    dest.parent.mkdir()
    dest.write_bytes(REAL[: len(REAL) // 2])
    assert verify_bz2(dest) is not None
    report = download_day(DAY, tmp_path, _cfg(server), hours=[0])
    assert report.counts["downloaded"] == 1 and dest.read_bytes() == REAL


def test_corrupt_response_is_discarded_and_fetched_again(server: _Server, tmp_path: Path) -> None:
    server.corrupt_times = 1
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "downloaded" and res.attempts == 2 and (tmp_path / "f.bz2").read_bytes() == REAL


def test_a_file_the_server_always_sends_damaged_is_kept_as_truncated(server: _Server, tmp_path: Path) -> None:
    server.corrupt_times = 10  # the same damaged bytes every time: the server's own copy is damaged
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "truncated" and res.attempts == 2 and "corrupt" in res.error
    kept = (tmp_path / "f.bz2").read_bytes()
    assert len(kept) == len(REAL) and kept != REAL and verify_bz2(tmp_path / "f.bz2") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["f.bz2"]  # for the parser, which keeps what is readable


def test_damage_that_differs_each_time_fails_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.corrupt_times, server.corrupt_varies = 10, True  # a flaky transfer, not a damaged file
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "failed" and res.attempts == 3 and "corrupt" in res.error
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_and_each_retry_is_logged(server: _Server, tmp_path: Path) -> None:
    server.statuses = [500, 503]
    log: list[str] = []
    report = download_day(DAY, tmp_path, _cfg(server), hours=[0], progress=log.append)
    res = report.files[0]
    assert res.status == "downloaded" and res.attempts == 3 and res.retries == 2 and report.retries == 2
    retries = [m for m in log if "retrying" in m]
    assert len(retries) == 2 and "HTTP 500" in retries[0] and "HTTP 503" in retries[1]


def test_a_range_answer_from_the_wrong_offset_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "f.bz2.part").write_bytes(REAL[:1000])
    server.bad_content_range = True
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "downloaded" and res.attempts == 2 and (tmp_path / "f.bz2").read_bytes() == REAL


def test_the_retry_budget_makes_later_failures_final(server: _Server, tmp_path: Path) -> None:
    server.statuses = [500] * 50
    cfg = _cfg(server, retries=10, backoff_s=0.05, retry_budget_s=0.3)
    budget = RetryBudget(cfg.retry_budget_s)
    t0 = time.perf_counter()
    first = download_file(dump_url(cfg.base_url, DAY, 0), tmp_path / "a.bz2", cfg, budget)
    assert first.status == "failed" and "retry budget of 0.3 s spent" in first.error
    assert 2 <= first.attempts <= 4  # waits 0.05, 0.1, 0.2 s: the budget runs out long before 10 retries
    second = download_file(dump_url(cfg.base_url, DAY, 0), tmp_path / "b.bz2", cfg, budget)
    assert second.status == "failed" and "retry budget" in second.error
    assert first.attempts + second.attempts <= 5  # the two files shared one budget
    assert time.perf_counter() - t0 < 0.3 + 1.0
    server.statuses = []
    third = download_file(dump_url(cfg.base_url, DAY, 0), tmp_path / "c.bz2", cfg, budget)
    assert third.status == "downloaded" and budget.left == cfg.retry_budget_s  # a success restores it


def test_missing_hours_are_their_own_status_and_the_day_report_is_kept(
    server: _Server, tmp_path: Path
) -> None:
    report = download_day(DAY, tmp_path, _cfg(server), hours=[0, 5], progress=lambda m: None)
    assert report.counts == {
        "downloaded": 1,
        "resumed": 0,
        "skipped": 0,
        "missing": 1,
        "truncated": 0,
        "failed": 0,
    }
    missing = report.files[1]
    assert missing.error == f"404 for URL {dump_url(_cfg(server).base_url, DAY, 5)}" and missing.attempts == 1
    assert report.paths == [str(tmp_path / str(DAY) / f"ping-{DAY}T0000.bz2")]
    assert report.missing_hours == [5]
    saved = read_day_report(tmp_path, DAY)
    assert saved is not None and saved.counts == report.counts and saved.missing_hours == [5]
    assert read_day_report(tmp_path, DAY + dt.timedelta(days=1)) is None  # never asked for


def test_an_unreachable_host_fails_the_day_fast_with_one_message(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = DownloadConfig(base_url=f"http://127.0.0.1:{port}", retries=4, backoff_s=0.2, retry_budget_s=1.0)
    t0 = time.perf_counter()
    with pytest.raises(HostUnreachable) as err:
        download_day(DAY, tmp_path, cfg)  # 24 hours, but it stops at the first
    seconds = time.perf_counter() - t0
    assert seconds < 5, seconds  # waits 0.2 + 0.4 s, then the 1 s budget has no room for 0.8 s more
    message = str(err.value)
    assert "\n" not in message and f"cannot download from http://127.0.0.1:{port}" in message
    assert "ConnectionError" in message and "3 attempts" in message
    assert not (tmp_path / str(DAY) / "download-report.json").exists()


def test_a_refusing_host_fails_at_once(server: _Server, tmp_path: Path) -> None:
    server.statuses = [403] * 30
    with pytest.raises(HostUnreachable, match="refused: HTTP 403"):
        download_day(DAY, tmp_path, _cfg(server))
    assert len(server.requests) == 1

"""Downloader behaviour against a real HTTP server on 127.0.0.1 serving real-format bz2 dumps."""

from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pingllm_core.download import DownloadConfig, download_day, download_file, dump_url, verify_bz2

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
        if body is None:
            self.send_error(404)
            return
        if srv.corrupt_times > 0:
            srv.corrupt_times -= 1
            body = body[:100] + bytes(b ^ 0x5A for b in body[100:200]) + body[200:]
        start = int(rng.split("=")[1].split("-")[0]) if rng and srv.honour_range else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
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
    assert res.status == "downloaded" and (tmp_path / "f.bz2").read_bytes() == REAL
    # Resumes from the bytes it kept (a partial last chunk of the cut response may be lost).
    offset = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 1500 and res.attempts == 2 and res.bytes == len(REAL)


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


def test_always_corrupt_fails_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.corrupt_times = 10
    res = download_file(dump_url(_cfg(server).base_url, DAY, 0), tmp_path / "f.bz2", _cfg(server))
    assert res.status == "failed" and res.attempts == 3 and "corrupt" in res.error
    assert list(tmp_path.iterdir()) == []


def test_missing_hour_is_reported_with_a_clear_message(server: _Server, tmp_path: Path) -> None:
    report = download_day(DAY, tmp_path, _cfg(server), hours=[0, 5], progress=lambda m: None)
    assert report.counts == {"downloaded": 1, "skipped": 0, "resumed": 0, "failed": 1}
    failed = report.files[1]
    assert failed.error == f"404 for URL {dump_url(_cfg(server).base_url, DAY, 5)}" and failed.attempts == 1
    assert report.paths == [str(tmp_path / str(DAY) / f"ping-{DAY}T0000.bz2")]


def test_unreachable_server_fails_after_retries(tmp_path: Path) -> None:
    cfg = DownloadConfig(base_url="http://127.0.0.1:9", timeout=1.0, retries=1, backoff_s=0.01)
    res = download_file(dump_url(cfg.base_url, DAY, 0), tmp_path / "f.bz2", cfg)
    assert res.status == "failed" and res.attempts == 2 and "ConnectionError" in res.error

"""A loopback HTTP server in the RIPE Atlas daily-dump layout, with Range requests and injectable faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DumpServer(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes); anything else is 404. Faults, per URL path:
    `cut_once[path] = n`: the next response sends n body bytes of the promised length, then drops the connection;
    `statuses[path] = [500, 503]`: answer the next requests with these statuses (then the file)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.statuses: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status sent)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def record(self, path: str, rng: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((path, rng, status))


class _Handler(BaseHTTPRequestHandler):
    server: DumpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server; a cut connection is then a real cut

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        srv, path, rng = self.server, self.path, self.headers.get("Range")
        queued = srv.statuses.get(path)
        if queued:
            status = queued.pop(0)
            srv.record(path, rng, status)
            self.send_error(status)
            return
        body = srv.files.get(path)
        if body is None:
            srv.record(path, rng, 404)
            self.send_error(404)
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start >= len(body):
            srv.record(path, rng, 416)
            self.send_error(416)
            return
        status = 206 if start else 200
        srv.record(path, rng, status)
        self.send_response(status)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = srv.cut_once.pop(path, None)
        if cut is not None:
            self.wfile.write(body[start : start + cut])
            self.wfile.flush()
            self.close_connection = True  # the rest never comes: the client sees a short body
            return
        self.wfile.write(body[start:])


@contextmanager
def serving() -> Iterator[DumpServer]:
    """A DumpServer on a free loopback port, in a thread, for the duration of the block."""
    srv = DumpServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()

"""RIPE Atlas daily dumps over HTTP: streaming, resumable, retried, bz2-verified, atomic (SPEC section 1)."""

from __future__ import annotations

import bz2
import datetime as dt
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import requests

DEFAULT_BASE_URL = "https://data-store.ripe.net/datasets/atlas-daily-dumps"


@dataclass(frozen=True)
class DownloadConfig:
    """Where dumps come from and how hard to try."""

    base_url: str = DEFAULT_BASE_URL  # <base_url>/<YYYY-MM-DD>/ping-<YYYY-MM-DD>T<HH>00.bz2
    timeout: float = 60.0  # seconds to connect and between received bytes
    retries: int = 4  # extra attempts after the first, per file
    backoff_s: float = 2.0  # first wait between attempts (s); doubles each time
    chunk_bytes: int = 1 << 20  # streamed bytes per write

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retries < 0 or self.backoff_s < 0 or self.chunk_bytes < 1:
            raise ValueError("timeout > 0, retries >= 0, backoff_s >= 0 and chunk_bytes >= 1 are required")


@dataclass
class FileResult:
    """Outcome for one file: status downloaded | skipped | resumed | failed."""

    url: str
    path: str
    status: str
    bytes: int = 0  # bytes received over the network in this call
    seconds: float = 0.0
    attempts: int = 0
    error: str | None = None


@dataclass
class DownloadReport:
    """Per-file results of a day and their totals."""

    day: str
    files: list[FileResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Files per status."""
        out = {"downloaded": 0, "skipped": 0, "resumed": 0, "failed": 0}
        for f in self.files:
            out[f.status] += 1
        return out

    @property
    def bytes(self) -> int:
        """Bytes received over the network."""
        return sum(f.bytes for f in self.files)

    @property
    def seconds(self) -> float:
        """Summed per-file seconds."""
        return sum(f.seconds for f in self.files)

    @property
    def paths(self) -> list[str]:
        """Verified files on disk (downloaded, resumed or skipped)."""
        return [f.path for f in self.files if f.status != "failed"]


def dump_url(base_url: str, day: dt.date, hour: int) -> str:
    """URL of one hourly ping dump."""
    return f"{base_url.rstrip('/')}/{day.isoformat()}/ping-{day.isoformat()}T{hour:02d}00.bz2"


def verify_bz2(path: Path, chunk_bytes: int = 1 << 20) -> str | None:
    """None when the file is a complete bz2 stream (or several), else why not."""
    dec, started = bz2.BZ2Decompressor(), False
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                while chunk:
                    started = True
                    dec.decompress(chunk)  # output discarded: only the stream's integrity matters
                    chunk = b""
                    if dec.eof:
                        chunk, dec, started = dec.unused_data, bz2.BZ2Decompressor(), False
    except (OSError, EOFError, ValueError) as exc:
        return f"corrupt bz2 data ({exc})"
    if started:
        return "bz2 stream is truncated"
    if path.stat().st_size == 0:
        return "empty file"
    return None


class _Retryable(Exception):
    """A failed attempt worth retrying."""


def _attempt(url: str, part: Path, cfg: DownloadConfig) -> tuple[int, bool]:
    """One GET into `part`, resuming what is there; returns (bytes received, resumed)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=cfg.timeout) as resp:
            if resp.status_code == 416 and have:  # nothing left to send: the part may already be whole
                return 0, True
            if resp.status_code == 404:
                raise FileNotFoundError(f"404 for URL {url}")
            if resp.status_code >= 400:
                raise _Retryable(f"HTTP {resp.status_code} for URL {url}")
            resumed = resp.status_code == 206
            mode = "ab" if resumed else "wb"  # a server that ignores Range sends 200 with the whole file
            expected = resp.headers.get("Content-Length")
            got = 0
            with open(part, mode) as fh:
                for chunk in resp.iter_content(cfg.chunk_bytes):
                    fh.write(chunk)
                    got += len(chunk)
            if expected is not None and got != int(expected):
                raise _Retryable(f"short read: {got} of {expected} bytes from {url}")
            return got, resumed
    except requests.RequestException as exc:
        raise _Retryable(f"{type(exc).__name__} for URL {url}: {str(exc).splitlines()[0][:200]}") from None


def download_file(url: str, dest: str | os.PathLike, cfg: DownloadConfig | None = None) -> FileResult:
    """Fetch url to dest via dest.part with resume, retries and bz2 verification; never raises for I/O."""
    cfg = cfg or DownloadConfig()
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    start = time.perf_counter()
    result = FileResult(url, str(dest), "failed")
    if dest.exists():
        if verify_bz2(dest) is None:
            result.status = "skipped"
            return result
        dest.unlink()  # a damaged file on disk is never passed on
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed_any = part.exists() and part.stat().st_size > 0
    for attempt in range(cfg.retries + 1):
        result.attempts = attempt + 1
        before = part.stat().st_size if part.exists() else 0
        try:
            got, resumed = _attempt(url, part, cfg)
            result.bytes += got
            resumed_any = resumed_any and (resumed or got == 0)
            problem = verify_bz2(part)
            if problem is None:
                os.replace(part, dest)
                result.status, result.error = ("resumed" if resumed_any else "downloaded"), None
                break
            part.unlink()  # corrupt content: start over from zero next time
            resumed_any = False
            result.error = f"{problem} in {url}"
        except FileNotFoundError as exc:
            result.error = str(exc)
            break  # a missing hour does not appear by retrying
        except (_Retryable, OSError) as exc:
            result.error = str(exc)
            # Bytes kept from a cut-off response count too (a 200 restart rewrote the file from zero).
            now = part.stat().st_size if part.exists() else 0
            result.bytes += max(0, now - before) if now >= before else now
        if attempt < cfg.retries:
            time.sleep(cfg.backoff_s * 2**attempt)
    result.seconds = time.perf_counter() - start
    return result


def download_day(
    day: dt.date,
    out_dir: str | os.PathLike,
    cfg: DownloadConfig | None = None,
    hours: Iterable[int] = range(24),
    progress: Callable[[str], None] | None = None,
) -> DownloadReport:
    """Download a day's hourly ping dumps to out_dir/<day>/; failures are reported, not raised."""
    cfg = cfg or DownloadConfig()
    report = DownloadReport(day.isoformat())
    for hour in hours:
        url = dump_url(cfg.base_url, day, hour)
        dest = Path(out_dir) / day.isoformat() / url.rsplit("/", 1)[1]
        res = download_file(url, dest, cfg)
        report.files.append(res)
        if progress:
            progress(f"{dest.name}: {res.status} {res.bytes / 1e6:.1f} MB in {res.seconds:.1f} s"
                     + (f" ({res.error})" if res.error else ""))  # fmt: skip
    return report

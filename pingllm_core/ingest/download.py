"""RIPE Atlas daily dumps over HTTP: streaming, resumable, retried, bz2-verified, atomic (SPEC section 1).

Every hourly file ends in one status: downloaded, resumed (finished with an HTTP Range request), skipped (already
complete on disk), missing (404: the server has no such hour), truncated (the server itself holds a damaged file:
it is kept, and the parser keeps its lines before the damage) or failed. A host that cannot be reached or that
refuses us fails the whole call at once with `HostUnreachable`, after a short retry budget.
"""

from __future__ import annotations

import bz2
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
import urllib3

DEFAULT_BASE_URL = "https://data-store.ripe.net/datasets/atlas-daily-dumps"
STATUSES = ("downloaded", "resumed", "skipped", "missing", "truncated", "failed")
DAY_REPORT = "download-report.json"  # written into <out_dir>/<day>/ once the day has been asked for
_REFUSED = (401, 403)  # the host refuses us: no other hour will do better


@dataclass(frozen=True)
class DownloadConfig:
    """Where dumps come from and how hard to try."""

    base_url: str = DEFAULT_BASE_URL  # <base_url>/<YYYY-MM-DD>/ping-<YYYY-MM-DD>T<HH>00.bz2
    timeout: float = 60.0  # seconds without a received byte before an attempt fails
    connect_timeout: float = 10.0  # seconds to open a connection (what an unreachable host costs per attempt)
    retries: int = 4  # extra attempts after the first, per file
    backoff_s: float = 2.0  # first wait between attempts (s); doubles each time
    # seconds that failed attempts and the waits after them may take in a row, over files (a file that comes
    # through restores it); once spent, a failure is final, so a dead host costs this, not retries x 24 hours
    retry_budget_s: float = 30.0
    chunk_bytes: int = 1 << 20  # most bytes taken from the connection per write

    def __post_init__(self) -> None:
        if min(self.timeout, self.connect_timeout) <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout > 0, connect_timeout > 0, retries >= 0 and backoff_s >= 0 are required")
        if self.retry_budget_s < 0 or self.chunk_bytes < 1:
            raise ValueError("retry_budget_s >= 0 and chunk_bytes >= 1 are required")


class HostUnreachable(RuntimeError):
    """The dump server could not be reached, or refused us: nothing of the run can be downloaded."""


class RetryBudget:
    """Seconds of failed attempts and waits allowed in a row; shared by every file of a run."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.left = seconds, seconds

    def charge(self, seconds: float) -> None:
        self.left -= seconds

    def allows(self, wait: float) -> bool:
        return self.left >= wait

    def restore(self) -> None:
        """A file came through: the host works, so the next trouble gets the whole budget again."""
        self.left = self.seconds


@dataclass
class FileResult:
    """Outcome for one file; `status` is one of STATUSES."""

    url: str
    path: str
    status: str
    bytes: int = 0  # bytes received over the network in this call
    seconds: float = 0.0
    attempts: int = 0  # requests made (0 when a complete file was already on disk)
    error: str | None = None
    unreachable: bool = False  # no attempt got an HTTP response, or the host refused us (401/403)

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return max(self.attempts - 1, 0)


@dataclass
class DownloadReport:
    """Per-file results of a day and their totals."""

    day: str
    files: list[FileResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Files per status."""
        out = dict.fromkeys(STATUSES, 0)
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
    def retries(self) -> int:
        """Attempts after the first, over all files."""
        return sum(f.retries for f in self.files)

    @property
    def paths(self) -> list[str]:
        """Files on disk for the parser (downloaded, resumed, skipped, or truncated on the server)."""
        return [f.path for f in self.files if f.status not in ("missing", "failed")]

    @property
    def missing_hours(self) -> list[int]:
        """Hours the server does not have (404), from the file names."""
        return [int(Path(f.path).name[-8:-6]) for f in self.files if f.status == "missing"]

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically)."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps({"day": self.day, "files": [asdict(f) for f in self.files]}, indent=1))
        os.replace(tmp, path)


def read_day_report(out_dir: str | os.PathLike, day: dt.date) -> DownloadReport | None:
    """The report download_day left for a day, or None when the day was never asked for."""
    path = Path(out_dir) / day.isoformat() / DAY_REPORT
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return DownloadReport(data["day"], [FileResult(**f) for f in data["files"]])


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


class _NoResponse(_Retryable):
    """The attempt got no HTTP response at all (refused, unresolvable, timed out connecting, reset)."""


class _Refused(Exception):
    """The host answered 401 or 403."""


def _first_line(exc: BaseException) -> str:
    """`Type: message` on one line; for a connection error, urllib3's underlying reason without its wrapping."""
    inner = getattr(exc.args[0], "reason", None) if exc.args else None
    text = str(inner if inner is not None else exc)
    text = re.sub(r"^\w+\(host=[^)]*\): ", "", text.splitlines()[0] if text else "")[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attempt(url: str, part: Path, cfg: DownloadConfig) -> tuple[int, bool]:
    """One GET into `part`, resuming what is there; returns (bytes received, whether it was a Range resume)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=(cfg.connect_timeout, cfg.timeout))
    except requests.RequestException as exc:
        raise _NoResponse(f"{_first_line(exc)} for URL {url}") from None
    try:
        with resp:
            if resp.status_code == 416 and have:  # nothing left to send: the part may already be whole
                return 0, True
            if resp.status_code == 404:
                raise FileNotFoundError(f"404 for URL {url}")
            if resp.status_code in _REFUSED:
                raise _Refused(f"HTTP {resp.status_code} for URL {url}")
            if resp.status_code >= 400:
                raise _Retryable(f"HTTP {resp.status_code} for URL {url}")
            resumed = resp.status_code == 206
            if resumed and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                part.unlink()  # a range we did not ask for: start again from zero
                raise _Retryable(f"unexpected Content-Range {resp.headers.get('Content-Range')!r} from {url}")
            expected = resp.headers.get("Content-Length")
            got = 0
            with open(part, "ab" if resumed else "wb") as fh:  # a server ignoring Range sends 200, all of it
                # read1 hands over whatever has arrived (up to chunk_bytes), so a cut connection loses none of
                # the bytes received; iter_content would drop its partly filled last chunk
                while chunk := resp.raw.read1(cfg.chunk_bytes, decode_content=True):
                    fh.write(chunk)
                    got += len(chunk)
            if expected is not None and got != int(expected):
                raise _Retryable(f"short read: {got} of {expected} bytes from {url}")
            return got, resumed
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
    ) as exc:  # cut off mid-body: what came stays
        raise _Retryable(f"{_first_line(exc)} for URL {url}") from None


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    cfg: DownloadConfig | None = None,
    budget: RetryBudget | None = None,
    progress: Callable[[str], None] | None = None,
) -> FileResult:
    """Fetch url to dest via dest.part with resume, retries and bz2 verification; never raises for I/O.

    A damaged file that the server sends twice byte for byte is the server's own: it is kept (status
    truncated) for the lines before the damage, instead of being fetched until the retries run out."""
    cfg = cfg or DownloadConfig()
    budget = budget or RetryBudget(cfg.retry_budget_s)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    start = time.perf_counter()
    result = FileResult(url, str(dest), "failed")
    if dest.exists():
        if verify_bz2(dest) is None:
            result.status = "skipped"
            return result
        dest.unlink()  # a damaged file on disk is fetched again: the server may have a whole one by now
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed, damaged_digest, no_response = False, None, True
    for attempt in range(cfg.retries + 1):
        result.attempts = attempt + 1
        t_attempt = time.perf_counter()
        before = part.stat().st_size if part.exists() else 0
        try:
            got, ranged = _attempt(url, part, cfg)
            no_response = False
            result.bytes += got
            resumed = ranged or (resumed and got == 0)  # a 200 rewrote the part from zero
            problem = verify_bz2(part)
            if problem is None:
                os.replace(part, dest)
                result.status, result.error = ("resumed" if resumed else "downloaded"), None
                break
            digest = _digest(part)
            if digest == damaged_digest:  # the same damaged bytes twice: that is what the server has
                os.replace(part, dest)
                result.status, result.error = "truncated", f"{problem} in {url} (the server's copy)"
                break
            damaged_digest, resumed = digest, False
            part.unlink()  # start over from zero next time
            result.error = f"{problem} in {url}"
        except FileNotFoundError as exc:
            result.status, result.error = "missing", str(exc)  # a missing hour does not appear by retrying
            break
        except _Refused as exc:
            result.error, result.unreachable = f"refused: {exc}", True
            break
        except (_Retryable, OSError) as exc:
            no_response = no_response and isinstance(exc, _NoResponse)
            result.error = str(exc)
            # Bytes kept from a cut-off response count too (a 200 restart rewrote the file from zero).
            now = part.stat().st_size if part.exists() else 0
            result.bytes += max(0, now - before) if now >= before else now
        budget.charge(time.perf_counter() - t_attempt)
        if attempt == cfg.retries:
            break
        wait = cfg.backoff_s * 2**attempt
        if not budget.allows(wait):
            result.error += f" (retry budget of {budget.seconds:g} s spent)"
            break
        if progress:
            progress(f"{dest.name}: attempt {attempt + 1} failed ({result.error}); retrying in {wait:.2f} s")
        budget.charge(wait)
        time.sleep(wait)
    if result.status == "failed":
        result.unreachable = result.unreachable or no_response
    else:
        budget.restore()
    result.seconds = time.perf_counter() - start
    return result


def download_day(
    day: dt.date,
    out_dir: str | os.PathLike,
    cfg: DownloadConfig | None = None,
    hours: Iterable[int] = range(24),
    progress: Callable[[str], None] | None = None,
    budget: RetryBudget | None = None,
) -> DownloadReport:
    """Download a day's hourly ping dumps to out_dir/<day>/ and leave the report there (DAY_REPORT).
    Missing, damaged and failed files are reported, not raised; a host that cannot be reached or refuses us
    raises HostUnreachable at its first file, since no other hour would fare better."""
    cfg = cfg or DownloadConfig()
    budget = budget or RetryBudget(cfg.retry_budget_s)
    report = DownloadReport(day.isoformat())
    day_dir = Path(out_dir) / day.isoformat()
    for hour in hours:
        url = dump_url(cfg.base_url, day, hour)
        res = download_file(url, day_dir / url.rsplit("/", 1)[1], cfg, budget, progress)
        if res.unreachable:
            reason = (res.error or "").split(" for URL ")[0]
            raise HostUnreachable(
                f"cannot download from {cfg.base_url}: {reason} ({Path(res.path).name}: {res.attempts} attempts "
                f"in {res.seconds:.1f} s); check ripe_base_url and the network"
            )
        report.files.append(res)
        if progress:
            progress(f"{Path(res.path).name}: {res.status} {res.bytes / 1e6:.1f} MB in {res.seconds:.1f} s"
                     + (f" ({res.error})" if res.error else ""))  # fmt: skip
    day_dir.mkdir(parents=True, exist_ok=True)
    report.save(day_dir / DAY_REPORT)
    return report

"""User input for queries: addresses and their families, times, RTTs and candidate lists.

Every problem with user input raises `QueryError` (a ValueError) with a message a person can act on; the
query engine and the CLI share these rules (one rule for address families: `check_families`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable

import numpy as np

from pingllm_core.query.rtt_codes import MAX_RTT_MS

MIN_TIME, MAX_TIME = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01 UTC: times a query may name


class QueryError(ValueError):
    """Bad user input to a query (address, time, context file); the message is meant for people."""


class FamilyError(QueryError):
    """A pair of addresses of different families (IPv4 and IPv6), asked without allowing it."""


def parse_ip(text: str, what: str = "address") -> tuple[str, bool]:
    """Validate one address; returns (canonical text, is_v6).

    A CIDR prefix, a zone id or an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is rejected: each address
    field of the token language holds exactly one family and one host, and a mapped address would silently
    change family, so we ask for the plain IPv4 form instead.
    """
    raw = str(text).strip()
    if "/" in raw:
        raise QueryError(f"{what} {raw!r} is a prefix (CIDR); give a single host address")
    if "%" in raw:
        raise QueryError(f"{what} {raw!r} has a zone id; give a global address without %scope")
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise QueryError(f"{what} {raw!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise QueryError(
            f"{what} {raw!r} is an IPv4-mapped IPv6 address (mixed families); use {addr.ipv4_mapped} instead"
        )
    return str(addr), addr.version == 6


def check_families(src: str, dst: str, allow_mixed: bool = False, dst_what: str = "destination") -> None:
    """The one rule for address families: a ping stays in one family, so a pair of different families is
    an error unless the caller asks for it explicitly (`allow_mixed`). Raises FamilyError."""
    s_v6, d_v6 = parse_ip(src, "source")[1], parse_ip(dst, dst_what)[1]
    if s_v6 != d_v6 and not allow_mixed:
        raise FamilyError(
            f"source {src} is IPv{6 if s_v6 else 4} but {dst_what} {dst} is IPv{6 if d_v6 else 4}: "
            f"a ping stays in one address family"
        )


def address_warnings(addrs: Iterable[str]) -> list[str]:
    """One warning naming the addresses that are not public (the model saw public addresses only)."""
    private = [a for a in dict.fromkeys(addrs) if not is_public(a)]
    if not private:
        return []
    shown = ", ".join(private[:3]) + (f" and {len(private) - 3} more" if len(private) > 3 else "")
    verb = "is not a public address" if len(private) == 1 else "are not public addresses"
    return [f"{shown} {verb}; the model was trained on public addresses only"]


def is_public(text: str) -> bool:
    """True for a global unicast address by the parser's rule (IANA special-purpose blocks excluded; IPv6
    only within 2000::/3): the only kind of source the model was trained on."""
    # The parser's rule, so that the two never disagree; imported here because `ingest.parse` loads duckdb and
    # pyarrow, which the CLI's start-up and input checks should not pay for.
    from pingllm_core.ingest.parse_address import classify_address

    return classify_address(str(ipaddress.ip_address(text)))[1]


def public_or_none(text: str) -> str | None:
    try:
        return text if is_public(text) else None
    except ValueError:
        return None


def family_or_none(text: str) -> bool | None:
    try:
        return ipaddress.ip_address(text.strip()).version == 6
    except ValueError:
        return None


def parse_time(value: object) -> int:
    """Unix seconds (int) from an int/float, a digit string, an ISO 8601 string or a datetime (naive = UTC)."""
    if isinstance(value, bool):
        raise QueryError(f"time {value!r} is not a time")
    if isinstance(value, int | float | np.integer | np.floating):
        if not np.isfinite(value) or value < 0:
            raise QueryError(f"time {value!r} must be non-negative unix seconds")
        return int(value)
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp())
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return parse_time(number)  # its own message for a negative or non-finite number
    try:
        return parse_time(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise QueryError(
            f"time {text!r} is neither unix seconds nor ISO 8601 (e.g. 2024-05-01T12:00:00Z)"
        ) from None


def _iso(unix_s: int) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_time_range(unix_s: int, what: str = "time", window: str | None = None) -> int:
    """`unix_s` if it lies in [MIN_TIME, MAX_TIME) (2000 to 2099), else QueryError naming that range and,
    when given, the model's training window."""
    if MIN_TIME <= unix_s < MAX_TIME:
        return unix_s
    shown = _iso(unix_s) if 0 <= unix_s < 253_402_300_800 else f"{unix_s} (unix seconds)"  # year <= 9999
    trained = f"; the model was trained on {window}" if window else ""
    raise QueryError(
        f"{what} {shown} is outside {_iso(MIN_TIME)[:10]} .. {_iso(MAX_TIME - 1)[:10]}, the times pingllm "
        f"accepts{trained}"
    )


def check_rtt(value: object, what: str = "RTT", failed_ok: bool = True) -> float:
    """An RTT in ms: finite and 0..MAX_RTT_MS, or (with `failed_ok`) -1 for a failed ping; else QueryError
    naming the representable range."""
    try:
        rtt = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QueryError(f"{what} {value!r} is not a number of milliseconds") from None
    if failed_ok and rtt == -1.0:
        return -1.0
    if not (np.isfinite(rtt) and 0.0 <= rtt <= MAX_RTT_MS):
        failed = ", or -1 for a failed ping" if failed_ok else ""
        raise QueryError(
            f"{what} {value!r} is outside the representable range: give 0 to {MAX_RTT_MS:.0f} ms (10 minutes, "
            f"the longest RTT the data keeps){failed}"
        )
    return rtt


_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*(?:(?:-|:|\.\.|to)\s*({_NUMBER}))?\s*$", re.IGNORECASE)


def parse_rtt_range(text: str) -> tuple[float, float]:
    """`MS` or a range `LO-HI` (also `LO:HI`, `LO..HI`) of RTTs in ms, 0 < LO <= HI <= MAX_RTT_MS."""
    match = _RANGE.match(str(text))
    if not match:
        raise QueryError(f"RTT must be MS or a range LO-HI in milliseconds (e.g. 20 or 10-30), got {text!r}")
    lo, hi = float(match.group(1)), float(match.group(2) or match.group(1))
    for v in (lo, hi):
        if not np.isfinite(v) or v > MAX_RTT_MS:
            raise QueryError(f"RTT {text!r} is outside the representable range 0 .. {MAX_RTT_MS:.0f} ms")
        if v <= 0:
            raise QueryError(
                f"RTT {text!r} has a bound at or below 0 ms; give positive milliseconds, e.g. 5-10"
            )
    if lo > hi:
        raise QueryError(f"RTT range {text!r} is reversed; give LO-HI with LO <= HI")
    return lo, hi


@dataclasses.dataclass
class Candidates:
    """Candidate destinations read from a list, with the lines that could not be used."""

    addrs: list[str]  # canonical addresses, in file order (duplicates kept)
    bad: list[tuple[int, str]]  # (line number, problem) of each unusable line
    other_family: list[int] = dataclasses.field(default_factory=list)  # lines of `bad` with the other family


def read_candidates(text: str, src: str, allow_mixed_family: bool = False) -> Candidates:
    """Candidate destinations for `src`: one address per line, `#` starts a comment, blank lines ignored.

    A line that is not a single host address, or (unless `allow_mixed_family`) holds an address of another
    family than the source, is reported in `bad` with its line number; the caller decides to stop or skip.
    """
    parse_ip(src, "source")
    out = Candidates([], [])
    for n, line in enumerate(text.splitlines(), start=1):
        raw = line.split("#")[0].strip()
        if not raw:
            continue
        try:
            addr, _ = parse_ip(raw, "candidate")
            check_families(src, addr, allow_mixed_family, dst_what="candidate")
        except FamilyError as err:
            out.bad.append((n, str(err)))
            out.other_family.append(n)
        except QueryError as err:
            out.bad.append((n, str(err)))
        else:
            out.addrs.append(addr)
    return out

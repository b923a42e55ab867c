"""User input for queries: addresses, times and context files (CSV, JSONL, raw RIPE result lines).

Every problem with user input raises `QueryError` (a ValueError) with a message a person can act on.
Context measurements travel as `tokens.Measurements`; a time of `NO_TIME` (-1) means "no timestamp".
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import datetime as dt
import gzip
import io
import ipaddress
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pingllm_core import tokens

NO_TIME = -1  # sentinel in Measurements.time: this context row has no timestamp (unix seconds are >= 0)
FIELD_ORDER = (tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME, tokens.FIELD_RESULT)  # of prompt rows
_MAX_MEASUREMENT_TOKENS = 47  # IPv6 src and dst, <TimestampAbs>, RTT: 1 + 17 + 17 + 9 + 3


class QueryError(ValueError):
    """Bad user input to a query (address, time, context file); the message is meant for people."""


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


def is_public(text: str) -> bool:
    """True for a global unicast address (the only kind the model was trained on)."""
    addr = ipaddress.ip_address(text)
    return addr.is_global and not addr.is_multicast


def _public_or_none(text: str) -> str | None:
    try:
        return text if is_public(text) else None
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
        return parse_time(float(text))
    except ValueError:
        pass
    try:
        return parse_time(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise QueryError(
            f"time {text!r} is neither unix seconds nor ISO 8601 (e.g. 2024-05-01T12:00:00Z)"
        ) from None


def make_measurements(
    times: Sequence[int], srcs: Sequence[str], dsts: Sequence[str], rtts: Sequence[float]
) -> tokens.Measurements:
    """Measurements from validated strings; times use NO_TIME where unknown, rtt -1.0 = failed."""
    src_addr, src_v6 = (
        tokens.ip_to_bytes(list(srcs)) if srcs else (np.zeros((0, 16), np.uint8), np.zeros(0, bool))
    )
    dst_addr, dst_v6 = (
        tokens.ip_to_bytes(list(dsts)) if dsts else (np.zeros((0, 16), np.uint8), np.zeros(0, bool))
    )
    return tokens.Measurements(
        time=np.asarray(times, np.int64).reshape(-1),
        src=src_addr,
        src_v6=np.asarray(src_v6, bool),
        dst=dst_addr,
        dst_v6=np.asarray(dst_v6, bool),
        rtt=np.asarray(rtts, np.float64).reshape(-1),
    )


def _rtt_value(value: object, where: str) -> float:
    """RTT in ms from a cell; empty, None or negative means failed (-1.0)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "*")):
        return -1.0
    try:
        rtt = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QueryError(f"{where}: rtt_ms {value!r} is not a number") from None
    if not np.isfinite(rtt) or rtt < 0:
        return -1.0
    return rtt


class _Rows:
    """Accumulates context rows with validation and row-numbered error messages."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.srcs: list[str] = []
        self.dsts: list[str] = []
        self.rtts: list[float] = []

    def add(self, where: str, time: object, src: object, dst: object, rtt: float) -> None:
        if src in (None, "") or dst in (None, ""):
            raise QueryError(f"{where}: needs both src and dst")
        try:
            s, _ = parse_ip(str(src), "src")
            d, _ = parse_ip(str(dst), "dst")
            t = NO_TIME if time in (None, "") else parse_time(time)
        except QueryError as err:
            raise QueryError(f"{where}: {err}") from None
        self.times.append(t)
        self.srcs.append(s)
        self.dsts.append(d)
        self.rtts.append(rtt)


def _ripe_result(rows: _Rows, obj: dict, where: str) -> None:
    """One RIPE ping result: one row per packet; source = `from`, else `src_addr`, whichever is a public
    address (SPEC section 1 source rule)."""
    src = next((a for a in (obj.get("from"), obj.get("src_addr")) if a and _public_or_none(str(a))), None)
    dst = obj.get("dst_addr") or obj.get("addr")
    if not src or not dst:
        return  # results without a usable source or destination give no row, as in the parser
    time = obj.get("timestamp")
    packets = obj.get("result")
    if not isinstance(packets, list) or not packets:
        rcvd = float(obj.get("rcvd") or 0)
        rows.add(where, time, src, dst, _rtt_value(obj.get("avg"), where) if rcvd > 0 else -1.0)
        return
    for packet in packets:
        if not isinstance(packet, dict) or "dup" in packet:
            continue  # duplicate replies give no row
        rows.add(where, time, src, dst, _rtt_value(packet.get("rtt"), where))


def _json_objects(text: str) -> Iterable[tuple[str, dict]]:
    """JSON lines, or one JSON array of objects, with line numbers for messages."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise QueryError(f"context is not valid JSON: {err}") from None
        for i, obj in enumerate(data):
            yield f"item {i}", obj
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {i}", json.loads(line)
        except json.JSONDecodeError as err:
            raise QueryError(f"line {i}: not valid JSON ({err.msg})") from None


def _read_text(path: Path) -> str:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise QueryError(f"context file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise QueryError(f"context file {str(path)!r} cannot be read: {err}") from None


def load_context(path: str | Path) -> tokens.Measurements:
    """Read the user's recent pings (CSV, JSONL or raw RIPE result lines; .bz2/.gz ok), sorted by time.

    CSV/JSONL keys: `time` or `timestamp` (unix s or ISO 8601; empty = no timestamp), `src`, `dst`, `rtt_ms`
    (-1 or empty = failed). RIPE results (objects with a `result` list or `type` "ping") give one row per packet.
    Rows without a timestamp come first (they are encoded untimed), then timestamped rows in time order.
    """
    path = Path(path)
    if path.is_dir():
        raise QueryError(f"context file {str(path)!r} is a folder")
    text = _read_text(path)
    rows = _Rows()
    if text.lstrip()[:1] in ("{", "["):
        for where, obj in _json_objects(text):
            if not isinstance(obj, dict):
                raise QueryError(f"{where}: expected a JSON object")
            if "result" in obj or obj.get("type") == "ping":
                _ripe_result(rows, obj, where)
            else:
                time = obj.get("time", obj.get("timestamp"))
                rtt = _rtt_value(obj.get("rtt_ms", obj.get("rtt")), where)
                rows.add(where, time, obj.get("src"), obj.get("dst"), rtt)
    else:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip() for f in reader.fieldnames or []}
        missing = {"src", "dst"} - fields
        if missing:
            raise QueryError(
                f"context CSV {str(path)!r} lacks column(s) {sorted(missing)}; need src, dst, rtt_ms"
            )
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            where = f"line {i}"
            time = row.get("time", row.get("timestamp"))
            rows.add(
                where,
                time,
                row.get("src"),
                row.get("dst"),
                _rtt_value(row.get("rtt_ms", row.get("rtt")), where),
            )
    if not rows.times:
        raise QueryError(f"context file {str(path)!r} holds no measurements")
    m = make_measurements(rows.times, rows.srcs, rows.dsts, rows.rtts)
    return take(m, np.argsort(m.time, kind="stable"))


def take(m: tokens.Measurements, idx: np.ndarray) -> tokens.Measurements:
    """Rows `idx` of a Measurements (fancy indexing on every column)."""
    return tokens.Measurements(
        time=m.time[idx],
        src=m.src[idx],
        src_v6=m.src_v6[idx],
        dst=m.dst[idx],
        dst_v6=m.dst_v6[idx],
        rtt=m.rtt[idx],
    )


def concat(parts: Sequence[tokens.Measurements]) -> tokens.Measurements:
    """Row-wise concatenation of Measurements."""
    return tokens.Measurements(
        time=np.concatenate([p.time for p in parts]),
        src=np.concatenate([p.src for p in parts]),
        src_v6=np.concatenate([p.src_v6 for p in parts]),
        dst=np.concatenate([p.dst for p in parts]),
        dst_v6=np.concatenate([p.dst_v6 for p in parts]),
        rtt=np.concatenate([p.rtt for p in parts]),
    )


def as_measurements(context: tokens.Measurements | str | Path | None) -> tokens.Measurements | None:
    """Accept a Measurements, a path to a context file, or None / an empty sequence (no context)."""
    if context is None or (isinstance(context, tuple | list) and not context):
        return None
    if isinstance(context, tokens.Measurements):
        return context
    return load_context(context)


@dataclasses.dataclass
class Prompt:
    """Prompt tokens and what was done to the context to build them."""

    tokens: np.ndarray  # int32[L], ends right before the asked field
    query_start: int  # index of the query's <MeasurementStart>
    warnings: list[str]
    context_used: int  # context measurements kept
    context_dropped: int  # oldest context measurements dropped to fit max_len


def build_prompt(
    query: tokens.Measurements, query_has_time: bool, context: tokens.Measurements | None, max_len: int,
    reserve: int, order: Sequence[int] = FIELD_ORDER, cut: int = 1,
) -> Prompt:  # fmt: skip
    """Context (time order, fields in FIELD_ORDER) + the query measurement in field `order`, less its last
    `cut` tokens (the asked field's placeholder), dropping the fewest oldest context measurements so that
    prompt + `reserve` tokens fit `max_len`.

    A query time before the latest context time cannot follow it as an unsigned delta: we keep the context
    measurements (they still localise the source) but drop their timestamps, with a warning.
    """
    warnings: list[str] = []
    ctx = context if context is not None else make_measurements([], [], [], [])
    ctx = take(ctx, np.argsort(ctx.time, kind="stable"))  # untimed (NO_TIME) first, then by time
    ctx_has_time = ctx.time != NO_TIME
    if query_has_time and ctx_has_time.any() and query.time[0] < ctx.time[ctx_has_time].max():
        warnings.append("query time precedes the context times: context timestamps were dropped")
        ctx_has_time = np.zeros(len(ctx), bool)
    dropped = 0
    while True:
        m = concat([take(ctx, np.arange(dropped, len(ctx))), query])
        orders = np.tile(np.array(FIELD_ORDER, np.int8), (len(m), 1))
        orders[-1] = order
        toks = tokens.encode_measurements(
            m, np.concatenate([ctx_has_time[dropped:], [query_has_time]]), orders
        )
        over = len(toks) - cut + reserve - max_len  # tokens too many
        if over <= 0:
            break
        if dropped == len(ctx):
            raise QueryError(f"the query does not fit the model's context of {max_len} tokens")
        dropped = min(len(ctx), dropped + max(1, over // _MAX_MEASUREMENT_TOKENS))  # never drops too many
    if dropped:
        warnings.append(
            f"context too long for the model ({max_len} tokens): dropped the {dropped} oldest measurements"
        )
    toks = toks[: len(toks) - cut].astype(np.int32)
    start = int(np.flatnonzero(toks == tokens.MEASUREMENT_START)[-1])  # marker id 0 never collides with bytes
    return Prompt(toks, start, warnings, len(ctx) - dropped, dropped)

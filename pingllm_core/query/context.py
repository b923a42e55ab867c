"""Context files (CSV, JSONL, raw RIPE result lines) and prompt building for queries.

Every problem with a context file raises `QueryError` naming the file and line. Context measurements travel
as `tokens.Measurements`; a time of `NO_TIME` (-1) means "no timestamp". The format is documented, with a
sample, in docs/examples/context.csv.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pingllm_core.data import tokens
from pingllm_core.query.inputs import (
    QueryError,
    check_families,
    check_rtt,
    check_time_range,
    family_or_none,
    parse_ip,
    parse_time,
    public_or_none,
)

NO_TIME = -1  # sentinel in Measurements.time: this context row has no timestamp (unix seconds are >= 0)
CONTEXT_HEADER = "time,src,dst,rtt_ms"  # the context CSV's columns (docs/examples/context.csv)
FIELD_ORDER = (tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME, tokens.FIELD_RESULT)  # of prompt rows
_MAX_MEASUREMENT_TOKENS = 47  # IPv6 src and dst, <TimestampAbs>, RTT: 1 + 17 + 17 + 9 + 3


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
    """RTT in ms from a cell; empty, None, "*" or -1 means failed (-1.0); anything else must be 0..MAX_RTT_MS."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "*")):
        return -1.0
    try:
        return check_rtt(value.strip() if isinstance(value, str) else value, "rtt_ms")
    except QueryError as err:
        raise QueryError(f"{where}: {err}") from None


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
            check_families(s, d, dst_what="dst")
            t = NO_TIME if time in (None, "") else check_time_range(parse_time(time))
        except QueryError as err:
            raise QueryError(f"{where}: {err}") from None
        self.times.append(t)
        self.srcs.append(s)
        self.dsts.append(d)
        self.rtts.append(rtt)


def _ripe_result(rows: _Rows, obj: dict, where: str) -> None:
    """One RIPE ping result: one row per packet; source = `from`, else `src_addr`, whichever is a public
    address (SPEC section 1 source rule)."""
    dst = obj.get("dst_addr") or obj.get("addr")
    dst_v6 = family_or_none(str(dst)) if dst else None
    src = next((a for a in (obj.get("from"), obj.get("src_addr"))
                if a and public_or_none(str(a)) and family_or_none(str(a)) == dst_v6), None)  # fmt: skip
    if not src or dst_v6 is None:
        return  # results without a public source of the destination's family give no row, as in the parser
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


def _json_objects(text: str, name: str) -> Iterable[tuple[str, dict]]:
    """JSON lines, or one JSON array of objects, with line numbers for messages."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise QueryError(f"{name} line {err.lineno}: not valid JSON ({err.msg})") from None
        for i, obj in enumerate(data):
            yield f"{name} item {i}", obj
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name} line {i}", json.loads(line)
        except json.JSONDecodeError as err:
            raise QueryError(f"{name} line {i}: not valid JSON ({err.msg})") from None


def _csv_rows(rows: _Rows, text: str, name: str) -> None:
    """A context CSV: a header naming the columns (`time,src,dst,rtt_ms`; `timestamp` and `rtt` are accepted
    too, extra columns ignored), then one ping per line; blank lines and lines starting with `#` are skipped."""
    lines = ["" if line.lstrip().startswith("#") else line for line in text.splitlines()]
    reader = csv.reader(lines)
    header: list[str] | None = None
    try:
        for cells in reader:
            n = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = _csv_header(cells, name, n)
                continue
            if len(cells) > len(header):
                raise QueryError(f"{name} line {n}: {len(cells)} fields but the header has {len(header)}")
            row = dict(zip(header, (c.strip() for c in cells), strict=False))
            where = f"{name} line {n}"
            time = row.get("time", row.get("timestamp"))
            rtt = _rtt_value(row.get("rtt_ms", row.get("rtt")), where)
            rows.add(where, time, row.get("src"), row.get("dst"), rtt)
    except csv.Error as err:
        raise QueryError(f"{name} line {reader.line_num}: not valid CSV ({err})") from None
    if header is None:
        raise QueryError(f"{name} is empty; a context CSV starts with the header {CONTEXT_HEADER}")


def _csv_header(cells: list[str], name: str, n: int) -> list[str]:
    """The column names of a context CSV's first line, or a QueryError saying what is wrong with it."""
    header = [c.strip().lower() for c in cells]
    expected = f"expected the header {CONTEXT_HEADER} (see docs/examples/context.csv)"
    if len(cells) == 1:
        sep = next((c for c in ";\t|" if c in cells[0]), None)
        if sep:
            raise QueryError(
                f"{name} line {n}: columns must be separated by commas, found {sep!r}; {expected}"
            )
    missing = [c for c in ("src", "dst") if c not in header]
    if missing:
        raise QueryError(f"{name} line {n}: the header lacks column(s) {', '.join(missing)}; {expected}")
    return header


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

    CSV/JSONL keys: `time` or `timestamp` (unix s or ISO 8601, 2000 to 2099; empty = no timestamp), `src`,
    `dst` (one family per row), `rtt_ms` (0 to 600000; -1 or empty = failed). RIPE results (objects with a
    `result` list or `type` "ping") give one row per packet. Rows without a timestamp come first (they are
    encoded untimed), then timestamped rows in time order. Errors name the file and line.
    """
    path = Path(path)
    if path.is_dir():
        raise QueryError(f"context file {str(path)!r} is a folder")
    text = _read_text(path)
    name = path.name
    rows = _Rows()
    if not text.strip():
        raise QueryError(f"{name} is empty; a context CSV starts with the header {CONTEXT_HEADER}")
    if text.lstrip()[:1] in ("{", "["):
        for where, obj in _json_objects(text, name):
            if not isinstance(obj, dict):
                raise QueryError(f"{where}: expected a JSON object")
            if "result" in obj or obj.get("type") == "ping":
                _ripe_result(rows, obj, where)
            else:
                time = obj.get("time", obj.get("timestamp"))
                rtt = _rtt_value(obj.get("rtt_ms", obj.get("rtt")), where)
                rows.add(where, time, obj.get("src"), obj.get("dst"), rtt)
    else:
        _csv_rows(rows, text, name)
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

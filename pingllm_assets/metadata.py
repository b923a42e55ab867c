"""Helpers that turn core results into Dagster metadata (numbers, paths, pictures)."""

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA


def dir_bytes(path: Path) -> int:
    """Total size of the files under a folder (or of one file), in bytes."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def png_markdown(paths: list[Path]) -> dg.MetadataValue:
    """Figures inline in the Dagster UI: PNGs embedded in a markdown metadata entry.

    Markdown image syntax, not <img> tags: the UI's sanitizer strips raw HTML images.
    """
    parts = []
    for p in paths:
        b64 = base64.b64encode(Path(p).read_bytes()).decode()
        parts.append(f"**{Path(p).stem}**\n\n![{Path(p).stem}](data:image/png;base64,{b64})\n")
    return dg.MetadataValue.md("\n".join(parts))


def flat_numbers(prefix: str, values: Mapping[str, Any]) -> dict[str, float | int]:
    """Flatten a nested dict of numbers into `prefix/key` metadata entries (non-numbers dropped)."""
    out: dict[str, float | int] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_numbers(name, value))
        elif isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, int | float) and value == value:  # drop NaN: the UI cannot plot it
            out[name] = value
    return out


def rounded(value: float, digits: int = 4) -> float:
    """A float to `digits` significant digits, so the UI shows 0.1235 rather than 0.12345678901."""
    if value != value or value in (float("inf"), float("-inf")) or value == 0:
        return float(value)
    return float(f"{value:.{digits}g}")


def table_schema(schema: pa.Schema, descriptions: Mapping[str, str]) -> dg.TableSchema:
    """A Dagster column schema (the catalog's Columns tab) from an Arrow schema and a description per column."""
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, str(f.type), description=descriptions.get(f.name)) for f in schema]
    )


# SPEC section 1: the measurement table, which the sample and every split share.
MEASUREMENT_COLUMNS = table_schema(
    MEASUREMENT_SCHEMA,
    {
        "event_time": "when the probe sent the ping (the result's timestamp, UTC seconds)",
        "src_addr": "public source address of the probe (`from`, else a global `src_addr`)",
        "dst_addr": "destination address",
        "ip_version": "4 or 6",
        "rtt": "round-trip time of one packet in ms; -1.0 = failed (timeout or error)",
        "prb_id": "RIPE Atlas probe id: a grouping key only, never a model input",
    },
)

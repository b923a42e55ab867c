"""One way to open DuckDB for every stage: in memory for a stage's own work, or a database file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb


def connect(
    database: str | Path = ":memory:",
    *,
    threads: int = 0,
    memory_limit: str = "",
    read_only: bool = False,
    config: Mapping[str, object] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection; `threads` 0 and `memory_limit` "" keep DuckDB's defaults (all cores, 80% of RAM).

    `config` takes any other DuckDB setting (e.g. {"preserve_insertion_order": True}); the named arguments
    win over the same keys there. A file database's folder is created when missing.
    """
    settings: dict[str, object] = dict(config or {})
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads:
        settings["threads"] = int(threads)
    if memory_limit:
        settings["memory_limit"] = str(memory_limit)
    if str(database) != ":memory:" and not read_only:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(database), read_only=read_only, config=settings)

"""Project settings: which data source, which days, which data root. One TOML file or env vars."""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pingllm_core.paths import DataLayout, default_data_root

CONFIG_ENV = "PINGLLM_CONFIG"  # path to a TOML file with the keys of `ProjectSettings`
RIPE_BASE_URL = "https://data-store.ripe.net/datasets/atlas-daily-dumps"
SOURCES = ("synthetic", "ripe")


@dataclass(frozen=True)
class ProjectSettings:
    """What the asset graph runs on; everything else is per-stage config."""

    data_root: Path  # all outputs live under this folder (see paths.DataLayout)
    source: str = "synthetic"  # "synthetic" (embedded default) or "ripe" (download real daily dumps)
    start_day: str = "2024-07-01"  # first daily partition, YYYY-MM-DD (UTC)
    end_day: str = "2024-07-02"  # last daily partition, inclusive
    ripe_base_url: str = RIPE_BASE_URL  # <base>/<YYYY-MM-DD>/ping-<YYYY-MM-DD>T<HH>00.bz2
    synth_seed: int = 0  # seed of the synthetic internet
    synth_probes: int = 120  # probes in the synthetic internet (demo size on 2 cores)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        try:
            start, end = dt.date.fromisoformat(self.start_day), dt.date.fromisoformat(self.end_day)
        except ValueError as exc:
            raise ValueError(f"start_day/end_day must be YYYY-MM-DD: {exc}") from None
        if end < start:
            raise ValueError(f"end_day {self.end_day} is before start_day {self.start_day}")

    @property
    def days(self) -> list[dt.date]:
        """Every day of the window, inclusive."""
        start = dt.date.fromisoformat(self.start_day)
        end = dt.date.fromisoformat(self.end_day)
        return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_root)


def load_settings(path: str | Path | None = None) -> ProjectSettings:
    """Settings from a TOML file ($PINGLLM_CONFIG or `path`), then PINGLLM_<KEY> env vars on top."""
    values: dict[str, object] = {}
    path = path or os.environ.get(CONFIG_ENV)
    if path:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read settings file {path}: {exc}") from None
    known = {f.name: f for f in fields(ProjectSettings)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown settings in {path}: {sorted(unknown)}; known: {sorted(known)}")
    for name, f in known.items():
        env = os.environ.get(f"PINGLLM_{name.upper()}")
        if env is not None:
            values[name] = int(env) if f.type == "int" else env
    settings = ProjectSettings(data_root=default_data_root())
    if "data_root" in values:
        values["data_root"] = Path(str(values["data_root"])).expanduser().resolve()
    return replace(settings, **values)

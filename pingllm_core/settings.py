"""Project settings: which data source, which days, which data root. One TOML file or env vars."""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pingllm_core.paths import DataLayout, default_data_root

CONFIG_ENV = "PINGLLM_CONFIG"  # path to a TOML file with the keys of `ProjectSettings`
RIPE_BASE_URL = "https://data-store.ripe.net/datasets/atlas-daily-dumps"
SOURCES = ("synthetic", "ripe")


class SettingsError(ValueError):
    """A bad setting: the message is one line that names the key and where it came from."""


@dataclass(frozen=True)
class ProjectSettings:
    """What the asset graph runs on; everything else is per-stage config."""

    data_root: Path  # all outputs live under this folder (see paths.DataLayout)
    source: str = "synthetic"  # "synthetic" (embedded default) or "ripe" (download real daily dumps)
    start_day: str = "2024-07-01"  # first daily partition, YYYY-MM-DD (UTC)
    end_day: str = "2024-07-02"  # last daily partition, inclusive
    ripe_base_url: str = RIPE_BASE_URL  # <base>/<YYYY-MM-DD>/ping-<YYYY-MM-DD>T<HH>00.bz2
    synth_seed: int = 0  # seed of the synthetic internet
    synth_probes: int = 240  # probes in the synthetic internet (fewer overfit the demo: docs/ABLATIONS.md)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SettingsError(f"source must be one of {SOURCES}, got {self.source!r}")
        start, end = _day("start_day", self.start_day), _day("end_day", self.end_day)
        if end < start:
            raise SettingsError(f"end_day {self.end_day} is before start_day {self.start_day}")

    @property
    def days(self) -> list[dt.date]:
        """Every day of the window, inclusive."""
        start = dt.date.fromisoformat(self.start_day)
        end = dt.date.fromisoformat(self.end_day)
        return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_root)


def _day(key: str, value: object) -> dt.date:
    """A YYYY-MM-DD string as a date, or a SettingsError naming the key."""
    try:
        if isinstance(value, str) and len(value) == 10:
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise SettingsError(f"{key} must be a day YYYY-MM-DD, got {_shown(value)}")


def _shown(value: object) -> str:
    """A value as the user wrote it: text quoted, TOML dates and times as they read."""
    return repr(value) if isinstance(value, str) else str(value)


_INT_KEYS = {f.name for f in fields(ProjectSettings) if f.type == "int"}


def _coerce(key: str, value: object) -> object:
    """A TOML or environment value in the type the settings keep: days as YYYY-MM-DD text (TOML's native dates
    too), integers as int, the rest as text; raises SettingsError naming the key."""
    if key in ("start_day", "end_day"):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):  # start_day = 2019-05-22
            return value.isoformat()
        return _day(key, value).isoformat()
    if key in _INT_KEYS:
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(f"{key} must be an integer, got {_shown(value)}")
    if not isinstance(value, str):
        raise SettingsError(f"{key} must be a string, got {_shown(value)}")
    return value


def _read_toml(path: Path) -> dict[str, object]:
    """A settings file's table; a syntax error names the line and its text."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+)", str(exc))
        line = text.splitlines()[int(where.group(1)) - 1].strip() if where else ""
        shown = f" in `{line[:80]}`" if line else ""
        raise SettingsError(f"settings file {path}: not valid TOML{shown}: {exc}") from None


def load_settings(path: str | Path | None = None) -> ProjectSettings:
    """Settings from a TOML file ($PINGLLM_CONFIG or `path`), then PINGLLM_<KEY> env vars on top; a bad value
    raises SettingsError with one line naming the key and the file or variable it came from."""
    path = path or os.environ.get(CONFIG_ENV)
    raw: dict[str, tuple[object, str]] = {}  # key -> (value, where it came from)
    if path:
        raw = {k: (v, f"settings file {path}") for k, v in _read_toml(Path(path)).items()}
    known = [f.name for f in fields(ProjectSettings)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SettingsError(f"settings file {path}: unknown keys {unknown}; known: {sorted(known)}")
    for name in known:
        env = os.environ.get(f"PINGLLM_{name.upper()}")
        if env is not None:
            raw[name] = (env, f"environment variable PINGLLM_{name.upper()}")
    values: dict[str, object] = {}
    for name, (value, origin) in raw.items():
        try:
            values[name] = _coerce(name, value)
        except SettingsError as exc:
            raise SettingsError(f"{origin}: {exc}") from None
    if "data_root" in values:
        values["data_root"] = Path(str(values["data_root"])).expanduser().resolve()
    try:
        return replace(ProjectSettings(data_root=default_data_root()), **values)
    except SettingsError as exc:  # a rule over more than one value: a known source, end_day after start_day
        origins = sorted({origin for key, (_, origin) in raw.items() if key in str(exc)})
        raise SettingsError(f"{', '.join(origins) or 'default settings'}: {exc}") from None

"""The resources every asset shares, built from one `ProjectSettings`: the settings and the DuckDB catalog."""

import dataclasses
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pingllm_core.paths import DataLayout
from pingllm_core.settings import ProjectSettings, load_settings

_DEFAULTS = load_settings()  # $PINGLLM_CONFIG / PINGLLM_* env vars, read once when definitions load


class PingllmSettings(dg.ConfigurableResource):
    """Project settings as a Dagster resource (defaults from $PINGLLM_CONFIG and PINGLLM_* env vars)."""

    data_root: str = str(_DEFAULTS.data_root)
    source: str = _DEFAULTS.source
    start_day: str = _DEFAULTS.start_day  # the daily partitions are built from the same settings (build_defs)
    end_day: str = _DEFAULTS.end_day
    ripe_base_url: str = _DEFAULTS.ripe_base_url
    synth_seed: int = _DEFAULTS.synth_seed
    synth_probes: int = _DEFAULTS.synth_probes

    @classmethod
    def from_settings(cls, settings: ProjectSettings) -> "PingllmSettings":
        """The resource holding exactly `settings`."""
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ProjectSettings)}
        return cls(**fields | {"data_root": str(settings.data_root)})

    def settings(self) -> ProjectSettings:
        """The frozen core settings."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ProjectSettings)}
        return ProjectSettings(**fields | {"data_root": Path(self.data_root)})

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_root))


def default_settings() -> ProjectSettings:
    """Settings in force when the definitions were loaded."""
    return _DEFAULTS


def catalog_resource(settings: ProjectSettings) -> DuckDBResource:
    """dagster-duckdb's resource on the catalog file under the data root (<data root>/pingllm.duckdb)."""
    return DuckDBResource(database=str(settings.layout.catalog))


def resources_for(settings: ProjectSettings) -> dict[str, dg.ConfigurableResource]:
    """Every resource the assets name, from one ProjectSettings: `pingllm` (settings) and `catalog` (DuckDB)."""
    return {"pingllm": PingllmSettings.from_settings(settings), "catalog": catalog_resource(settings)}

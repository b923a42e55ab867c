"""The resources every asset shares, built from one `ProjectSettings`: the settings and the DuckDB catalog."""

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
        return cls(
            data_root=str(settings.data_root),
            source=settings.source,
            start_day=settings.start_day,
            end_day=settings.end_day,
            ripe_base_url=settings.ripe_base_url,
            synth_seed=settings.synth_seed,
            synth_probes=settings.synth_probes,
        )

    def settings(self) -> ProjectSettings:
        """The frozen core settings."""
        return ProjectSettings(
            data_root=Path(self.data_root),
            source=self.source,
            start_day=self.start_day,
            end_day=self.end_day,
            ripe_base_url=self.ripe_base_url,
            synth_seed=self.synth_seed,
            synth_probes=self.synth_probes,
        )

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

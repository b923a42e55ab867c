"""The one resource every asset shares: project settings (data root, source, days)."""

from pathlib import Path

import dagster as dg

from pingllm_core.paths import DataLayout
from pingllm_core.settings import ProjectSettings, load_settings

_DEFAULTS = load_settings()  # $PINGLLM_CONFIG / PINGLLM_* env vars, read once when definitions load


class PingllmSettings(dg.ConfigurableResource):
    """Project settings as a Dagster resource (defaults from $PINGLLM_CONFIG and PINGLLM_* env vars)."""

    data_root: str = str(_DEFAULTS.data_root)
    source: str = _DEFAULTS.source
    start_day: str = _DEFAULTS.start_day
    end_day: str = _DEFAULTS.end_day
    ripe_base_url: str = _DEFAULTS.ripe_base_url
    synth_seed: int = _DEFAULTS.synth_seed
    synth_probes: int = _DEFAULTS.synth_probes

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
    """Settings in force when the definitions were loaded (partitions are built from these)."""
    return _DEFAULTS

"""Dagster definitions for pingllm: thin assets over `pingllm_core`, one module per stage."""

import sys
import warnings

import dagster as dg

from pingllm_core.settings import SettingsError

# Single-run backfill policies are a deliberate choice (see partitions.py); their beta notice is noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def _settings_errors_in_one_line(previous):  # noqa: ANN001, ANN202 - sys.excepthook's signature
    """An excepthook that prints a bad setting as its one-line message, not as a traceback through the
    module imports (settings are read when the definitions load, so that is where a bad value surfaces)."""

    def hook(kind, exc, tb):  # noqa: ANN001, ANN202
        if isinstance(exc, SettingsError):
            print(f"pingllm: bad settings: {exc}", file=sys.stderr)
        else:
            previous(kind, exc, tb)

    return hook


sys.excepthook = _settings_errors_in_one_line(sys.excepthook)

"""A DAGSTER_HOME for tests that run Dagster against a real instance (a subprocess, or DagsterInstance.get())."""

from __future__ import annotations

import shutil
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def make_dagster_home(root: Path) -> Path:
    """`root/dagster_home` holding the project's dagster_instance.yaml as dagster.yaml; returns the folder."""
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT / "dagster_instance.yaml", home / "dagster.yaml")
    return home

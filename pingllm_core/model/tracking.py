"""Experiment tracking interface: a small `Tracker` protocol with in-memory backends (MLflow lives apart)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What the training loop and evaluation report to (params, metrics, artifacts, tags)."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Record run parameters (flat dict; values are stringified by backends that need it)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar metrics at a training step."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or folder to the run, optionally under a sub-folder."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set string tags on the run."""

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with a status (FINISHED, FAILED, KILLED)."""


class NullTracker:
    """Discards everything."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Ignore params."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Ignore metrics."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Ignore artifacts."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Ignore tags."""

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing to close."""


@dataclasses.dataclass
class ListTracker:
    """Keeps everything in memory: for tests and for asset metadata."""

    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)
    artifacts: list[tuple[Path, str | None]] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    status: str | None = None  # None while the run is open

    def log_params(self, params: dict[str, Any]) -> None:
        """Merge params into `self.params`."""
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Append (step, metrics)."""
        self.metrics.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Remember the artifact path."""
        self.artifacts.append((Path(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Merge tags."""
        self.tags.update({k: str(v) for k, v in tags.items()})

    def finish(self, status: str = "FINISHED") -> None:
        """Record the final status."""
        self.status = status

    def series(self, name: str) -> list[tuple[int, float]]:
        """All (step, value) pairs logged for one metric name."""
        return [(step, m[name]) for step, m in self.metrics if name in m]

"""MLflow backend of the `Tracker` protocol (the only module that imports mlflow)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag

from pingllm_core.paths import DataLayout

# MLflow 3's UI opens an experiment without this tag on its GenAI pages (traces); ours is a classic model run.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_PARAM_MAX = 6000  # MLflow's param value length limit (chars); longer values are truncated
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def local_tracking_uri(root: str | Path) -> str:
    """The embedded default: a SQLite backend at <root>/mlflow/mlflow.db."""
    db = DataLayout(Path(root).absolute()).mlflow / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def local_artifact_location(root: str | Path) -> str:
    """Artifacts of the embedded default live in <root>/mlflow/artifacts."""
    path = DataLayout(Path(root).absolute()).mlflow / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def experiment_ui_url(
    root: str | Path, host: str = "127.0.0.1", port: int = 5000, experiment: str = "pingllm"
) -> str:
    """Where `mlflow ui` shows `experiment`'s runs (its model-training view, not the GenAI pages)."""
    base = f"http://{host}:{port}/"
    if not (DataLayout(Path(root).absolute()).mlflow / "mlflow.db").exists():
        return base
    found = mlflow.MlflowClient(tracking_uri=local_tracking_uri(root)).get_experiment_by_name(experiment)
    if found is None:
        return base
    return f"{base}#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


class MlflowTracker:
    """One MLflow run, driven through MlflowClient (no global fluent state, safe beside other runs)."""

    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, artifact_location: str | None = None
    ):
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            experiment_id = found.experiment_id
        if found is None or found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        self.run_id: str = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.experiment_id: str = experiment_id

    @classmethod
    def resume(cls, tracking_uri: str, run_id: str) -> MlflowTracker:
        """Reopen an existing run (e.g. the training run, for the evaluation's figures and numbers)."""
        self = cls.__new__(cls)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        run = self.client.get_run(run_id)  # raises a clear MlflowException for an unknown id
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        return self

    @classmethod
    def local(cls, root: str | Path, experiment: str, run_name: str) -> MlflowTracker:
        """Tracker on the embedded SQLite backend under `root` (the data root)."""
        return cls(local_tracking_uri(root), experiment, run_name, local_artifact_location(root))

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params as strings (None becomes "None")."""
        items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at a step."""
        now_ms = int(time.time() * 1000)
        items = [Metric(k, float(v), now_ms, int(step)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a whole folder (e.g. a checkpoint step) to the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows as one table artifact (JSON), shown as a table in the run's Artifacts and Evaluation views."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with `status` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=status)

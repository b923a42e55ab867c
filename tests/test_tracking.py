"""Behaviour of the trackers: in-memory recording and a real MLflow SQLite backend round trip."""

import pandas as pd
from mlflow import MlflowClient

from pingllm_core.model.tracking import ListTracker, NullTracker, Tracker
from pingllm_core.model.tracking_mlflow import (
    EXPERIMENT_KIND,
    MlflowTracker,
    experiment_ui_url,
    local_tracking_uri,
)


def test_list_tracker_keeps_params_metrics_artifacts_tags_and_status(tmp_path):
    t = ListTracker()
    t.log_params({"lr": 0.1})
    t.log_metrics({"loss": 2.0, "lr": 0.1}, step=1)
    t.log_metrics({"loss": 1.5}, step=2)
    t.log_artifact(tmp_path / "fig.png", "figures")
    t.set_tags({"tier": "tiny"})
    t.finish("FAILED")
    assert t.params == {"lr": 0.1}
    assert t.series("loss") == [(1, 2.0), (2, 1.5)]
    assert t.artifacts == [(tmp_path / "fig.png", "figures")]
    assert (t.tags, t.status) == ({"tier": "tiny"}, "FAILED")


def test_backends_satisfy_the_tracker_protocol():
    assert isinstance(NullTracker(), Tracker) and isinstance(ListTracker(), Tracker)


def test_mlflow_tracker_round_trips_through_a_sqlite_backend(tmp_path):
    tracker = MlflowTracker.local(tmp_path, experiment="pingllm-test", run_name="tiny-1")
    tracker.log_params({"model.d_model": 64, "train.init_from": None, **{f"p{i}": i for i in range(150)}})
    tracker.log_metrics({"loss": 3.5, "lr": 1e-3}, step=10)
    tracker.log_metrics({"loss": 2.5}, step=20)
    artifact = tmp_path / "model_config.json"
    artifact.write_text('{"d_model": 64}')
    tracker.log_artifact(artifact, "checkpoint")
    tracker.set_tags({"tier": "tiny"})
    tracker.finish()

    client = MlflowClient(tracking_uri=local_tracking_uri(tmp_path))
    run = client.get_run(tracker.run_id)
    assert run.data.params["model.d_model"] == "64" and run.data.params["p149"] == "149"
    assert run.data.params["train.init_from"] == "None"
    assert run.data.tags["tier"] == "tiny" and run.info.status == "FINISHED"
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 3.5), (20, 2.5)]
    assert [f.path for f in client.list_artifacts(tracker.run_id, "checkpoint")] == [
        "checkpoint/model_config.json"
    ]
    local = client.download_artifacts(tracker.run_id, "checkpoint/model_config.json", str(tmp_path / "dl"))
    assert open(local).read() == '{"d_model": 64}'
    assert (tmp_path / "mlflow" / "artifacts").is_dir()
    # A second run reuses the experiment.
    again = MlflowTracker.local(tmp_path, experiment="pingllm-test", run_name="tiny-2")
    assert again.experiment_id == tracker.experiment_id and again.run_id != tracker.run_id


def test_mlflow_experiment_opens_on_its_runs_and_takes_a_comparison_table(tmp_path):
    assert experiment_ui_url(tmp_path, "127.0.0.1", 5050) == "http://127.0.0.1:5050/"  # nothing tracked yet
    tracker = MlflowTracker.local(tmp_path, experiment="pingllm", run_name="tiny")
    rows = [{"method": "model", "heldout_probes": 0.2}, {"method": "global_median", "heldout_probes": 0.4}]
    tracker.log_table(rows, artifact_file="evaluation/comparison.json")
    tracker.finish()
    client = MlflowClient(tracking_uri=local_tracking_uri(tmp_path))
    # MLflow 3 shows an experiment without this tag on its GenAI (traces) pages.
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    url = experiment_ui_url(tmp_path, "127.0.0.1", 5050)
    assert (
        url
        == f"http://127.0.0.1:5050/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    )
    local = client.download_artifacts(tracker.run_id, "evaluation/comparison.json", str(tmp_path / "dl"))
    assert pd.read_json(local, orient="split").to_dict("records") == rows
    assert '"type": "table"' in client.get_run(tracker.run_id).data.tags["mlflow.loggedArtifacts"]

"""The whole asset graph, materialized with the Dagster CLI against a real instance, on a small synthetic day."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

ASSETS = (
    "raw_ping_dumps",
    "measurements",
    "measurement_sample",
    "splits",
    "probe_records",
    "trained_model",
    "evaluation",
)
DAY = "2024-07-01"
RUN_CONFIG = {
    "ops": {
        "measurement_sample": {"config": {"sample_rows": 60_000}},
        "splits": {"config": {"sample_rows": 60_000}},
        "trained_model": {"config": {"steps": 60, "batch_size": 4, "seq_len": 512, "warmup_steps": 10}},
        "evaluation": {"config": {"rows_per_split": 24, "context_rows": 8, "live_targets": 3}},
    }
}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PINGLLM_DATA_ROOT": str(root / "data"),
        "PINGLLM_START_DAY": DAY,
        "PINGLLM_END_DAY": DAY,
        "PINGLLM_SYNTH_PROBES": "40",
    }
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "asset", "materialize", "-m", "pingllm_assets.definitions", "--select", "*",
           "--partition-range", f"{DAY}...{DAY}", "--config-json", json.dumps(RUN_CONFIG)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, home, proc.stdout + proc.stderr


def test_every_asset_is_materialized_with_metadata_in_the_instance(materialized, monkeypatch):
    root, home, _ = materialized
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        for name in ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event is not None, f"{name} was not materialized"
            assert event.asset_materialization.metadata, f"{name} has no metadata"
        model_meta = instance.get_latest_materialization_event(
            dg.AssetKey("trained_model")
        ).asset_materialization
        assert model_meta.metadata["eval_loss"].value < model_meta.metadata["unigram_loss"].value


def test_outputs_exist_on_disk(materialized):
    root, _, _ = materialized
    data = root / "data"
    assert list((data / "raw" / DAY).glob("ping-*.bz2"))
    assert list((data / "parquet" / "measurements").rglob("*.parquet"))
    assert all((data / "splits" / f"{s}.parquet").exists() for s in ("train", "heldout_probes", "future"))
    assert list((data / "records" / "train").glob("*.array_record"))
    assert (data / "checkpoints" / "tiny" / "model_config.json").exists()
    figures = list((data / "evaluation" / "figures").glob("*.png"))
    assert len(figures) >= 4 and all(p.stat().st_size > 5_000 for p in figures)
    metrics = json.loads((data / "evaluation" / "metrics.json").read_text())
    assert metrics["splits"]["heldout_probes"]["model"]["n"] > 0
    assert (data / "mlflow" / "mlflow.db").exists()


def test_training_progress_reaches_the_run_log(materialized):
    _, _, log = materialized
    assert "step 60/60" in log and "tok/s" in log

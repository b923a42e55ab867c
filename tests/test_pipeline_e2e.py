"""The whole asset graph, materialized with the Dagster CLI against a real instance, on a small synthetic day."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from graph_assets import GRAPH_ASSETS

ASSETS = GRAPH_ASSETS
DAY = "2024-07-01"
RUN_CONFIG = {
    "ops": {
        "measurement_sample": {"config": {"sample_rows": 60_000}},
        "splits": {"config": {"sample_rows": 60_000}},
        "trained_model": {
            "config": {"steps": 150, "batch_size": 8, "seq_len": 512, "lr": 3e-3, "warmup_steps": 10}
        },
        "evaluation": {"config": {"rows_per_split": 24, "context_rows": 8, "live_targets": 3}},
        "membership_audit_report": {"config": {"max_probes": 12, "contexts_per_probe": 1}},
        "privacy_mitigation_report": {
            "config": {
                "n_members": 8,
                "expected_batch": 4,
                "steps": 4,
                "seq_len": 128,
                "max_nonmembers": 12,
                "contexts_per_probe": 1,
            }  # fmt: skip
        },
        "poisoning_report": {"config": {"train_steps": 10, "model_rows": 8}},
        "distilled_tiers": {"config": {"steps": 5, "rows": 5, "repeats": 2, "rank_candidates": 10}},
    }
}


def _env(root: Path, home: Path) -> dict[str, str]:
    """The instance and settings the materialization ran with (the webserver reuses them)."""
    return {
        "DAGSTER_HOME": str(home),
        "PINGLLM_DATA_ROOT": str(root / "data"),
        "PINGLLM_START_DAY": DAY,
        "PINGLLM_END_DAY": DAY,
        "PINGLLM_SYNTH_PROBES": "40",
    }


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster_instance.yaml", home / "dagster.yaml")
    env = {**os.environ, **_env(root, home)}
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
        assert 0 < model_meta.metadata["eval_rtt_loss"].value < 30
        assert 0 < model_meta.metadata["marginal_rtt_loss"].value < 30
        # The evaluation's WARN check reports either way (it never blocks); its numbers are real.
        key = dg.AssetCheckKey(dg.AssetKey("evaluation"), "model_beats_global_median")
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert check is not None and check.evaluation is not None
        assert "model_rel_p50" in check.evaluation.metadata


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
    # Per-field loss with that field predicted last: finite, positive nats for every field.
    assert set(metrics["mode_nll"]) == {"src_ip", "dst_ip", "rtt", "timestamp"}
    assert all(0 < v < 30 for v in metrics["mode_nll"].values())
    assert (data / "mlflow" / "mlflow.db").exists()
    rows = json.loads((data / "privacy" / "mitigation.json").read_text())
    assert [r["variant"] for r in rows] == ["plain", "DP-SGD sigma=0.5 C=1"]
    assert rows[0]["epsilon"] == float("inf") and 0 < rows[1]["epsilon"] < float("inf")


def test_training_progress_reaches_the_run_log(materialized):
    _, _, log = materialized
    assert "step 150/150" in log and "tok/s" in log


# --- The Dagster UI in a real browser (headless Debian Chromium driven by Playwright) ---------------------------

# Debian's package, which `make test` installs when missing (`make browser`); Playwright downloads no browser.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
UI_TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webserver(materialized):
    """dagster-webserver on loopback over the fixture's instance and data root; stopped afterwards."""
    root, home, _ = materialized
    port = _free_port()
    env = {**os.environ, **_env(root, home)}
    webserver_bin = Path(sys.executable).parent / "dagster-webserver"
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "webserver.log").open("w")
    cmd = [str(webserver_bin), "-m", "pingllm_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, f"dagster-webserver exited: see {ARTIFACTS / 'webserver.log'}"
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dagster-webserver did not answer within 60 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_dagster_ui_shows_the_graph_the_figures_and_the_metrics(webserver):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            # On a fresh instance the UI opens a community/newsletter dialog over the page, whenever its
            # query returns; Playwright clicks its "Skip" (as a user would) each time it shows up.
            page.add_locator_handler(
                page.get_by_role("button", name="Skip"), lambda skip: skip.click(), no_wait_after=True
            )
            # The catalog lists every asset of the graph.
            page.goto(f"{webserver}/assets", wait_until="domcontentloaded")
            for name in ASSETS:
                link = page.locator(f'a[href="/assets/{name}"]')
                expect(link.first).to_be_visible()
                expect(link.first).to_contain_text(name)
            page.screenshot(path=str(ARTIFACTS / "ui-catalog.png"))
            # The evaluation asset's page: its metrics and the figures embedded in the `figures` entry.
            page.goto(f"{webserver}/assets/evaluation", wait_until="domcontentloaded")
            metric = page.get_by_role("row").filter(
                has=page.get_by_text("heldout_probes/model/rel_p50", exact=True)
            )
            expect(metric.first).to_be_visible()
            expect(metric.first).to_contain_text(re.compile(r"\d\.\d"))  # the key and its number
            page.screenshot(path=str(ARTIFACTS / "ui-evaluation.png"), full_page=True)
            # The `figures` markdown entry opens in a dialog; its PNGs must render (decoded, non-empty).
            figures_row = page.get_by_role("row").filter(has=page.get_by_text("figures", exact=True))
            figures_row.get_by_text("[Show Markdown]").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("relative_error_cdf")
            images = dialog.locator('img[src^="data:image/png;base64,"]')
            expect(images.first).to_be_visible()
            widths = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) >= 4 and min(widths) > 100, f"figures did not render: widths {widths}"
            page.screenshot(path=str(ARTIFACTS / "ui-evaluation-figures.png"))
        finally:
            browser.close()

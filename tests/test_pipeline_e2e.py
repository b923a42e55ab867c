"""The whole asset graph, materialized with the Dagster CLI against a real instance, on a small synthetic day."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from pingllm_assets.evaluation.evaluation import CHECK_BEATS_GLOBAL, SUMMARY
from pingllm_core import db
from pingllm_core.data import catalog
from tests.helpers.dagster_home import make_dagster_home
from tests.helpers.graph_assets import GRAPH_ASSETS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = GRAPH_ASSETS
PROJECT = Path(__file__).parents[1]
DAY = "2024-07-01"
RUN_CONFIG = {
    "ops": {
        "measurement_sample": {"config": {"sample_rows": 60_000}},
        "trained_model": {
            "config": {"steps": 400, "warmup_steps": 20}  # the demo's recipe, a sixth of its steps
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
    home = make_dagster_home(root)
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
        # The blocking check's bar: the model's RTTs depend on the pair and the context.
        assert (
            0
            < model_meta.metadata["eval_rtt_loss"].value
            < model_meta.metadata["marginal_rtt_loss"].value
            < 30
        )
        # The evaluation's check reports either way (it never blocks); ERROR severity, so a failure shows red.
        check = check_evaluation(instance)
        assert check.severity == dg.AssetCheckSeverity.ERROR
        assert "model_rel_p50" in check.metadata


def check_evaluation(instance: dg.DagsterInstance):
    """The latest evaluation of the model-quality check on `evaluation`."""
    key = dg.AssetCheckKey(dg.AssetKey("evaluation"), CHECK_BEATS_GLOBAL)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert record is not None and record.evaluation is not None
    return record.evaluation


def test_catalog_views_and_tables_count_what_the_asset_metadata_says(materialized, monkeypatch):
    root, home, _ = materialized
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        meta = {
            name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
            for name in ("measurements", "measurement_sample", "splits", "evaluation")
        }
        eval_run = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).run_id
    con = db.connect(root / "data" / "pingllm.duckdb", read_only=True)
    try:
        assert catalog.count(con, "measurements") == meta["measurements"]["dagster/row_count"].value > 0
        rejected = con.execute("SELECT coalesce(sum(lines), 0) FROM parse_rejects").fetchone()[0]
        assert rejected == meta["measurements"]["rejected_lines"].value
        assert catalog.count(con, "sample") == meta["measurement_sample"]["dagster/row_count"].value
        splits = {name: catalog.count(con, name) for name in ("train", "heldout_probes", "future")}
        assert splits == {name: meta["splits"][f"{name}/rows"].value for name in splits}
        assert sum(splits.values()) == meta["splits"]["dagster/row_count"].value
        per_run = "SELECT count(*) FROM evaluation_metrics WHERE run_id = ?"
        assert con.execute(per_run, [eval_run]).fetchone()[0] == meta["evaluation"]["catalog_rows"].value > 0
    finally:
        con.close()


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


def test_mlflow_run_holds_the_losses_the_loss_figure_and_the_evaluation_table(materialized):
    from mlflow import MlflowClient

    from pingllm_core.model.tracking_mlflow import EXPERIMENT_KIND, local_tracking_uri

    root, _, _ = materialized
    data = root / "data"
    client = MlflowClient(tracking_uri=local_tracking_uri(data))
    run_id = (data / "checkpoints" / "tiny" / "mlflow_run_id.txt").read_text().strip()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    assert {"loss", "rtt_loss", "eval_loss", "eval_rtt_loss", "rel_p50_heldout_probes_model"} <= set(
        run.data.metrics
    )
    assert not [m for m in run.data.metrics if m.startswith("eval/")]  # no chart section per number
    artifacts = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/comparison.json", "evaluation/report.md"} <= artifacts
    assert "loss_curve.png" in {f.path for f in client.list_artifacts(run_id)}


def test_training_progress_reaches_the_run_log(materialized):
    _, _, log = materialized
    assert "step 400/400" in log and "tok/s" in log


def test_the_materialize_command_warns_about_nothing_but_its_own_supersession(materialized):
    """CI runs `dagster asset materialize` (the design asks for it); Dagster says `dg launch` supersedes it."""
    _, _, log = materialized
    warnings = [line for line in log.splitlines() if re.search(r"\w+Warning\b", line)]
    assert [w for w in warnings if "asset_materialize_command` is superseded" not in w] == []


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
    """`dg dev` (what `make dev` runs) on loopback over the fixture's instance and data root; stopped afterwards.

    Yields the URL and the path of its log, which holds everything the command printed at start.
    """
    root, home, _ = materialized
    port = _free_port()
    env = {**os.environ, **_env(root, home)}
    dg_bin = Path(sys.executable).parent / "dg"
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "dg-dev.log"
    log = log_path.open("w")
    cmd = [str(dg_bin), "dev", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # dg dev starts a code server, the webserver and the daemon
    try:
        while True:
            assert proc.poll() is None, f"dg dev exited: see {log_path}"
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"dg dev did not answer within 180 s: see {log_path}"
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()  # dagster dev shuts its webserver, daemon and code server down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the children go with it
            proc.wait()
        log.close()


def test_dg_dev_starts_without_warnings(webserver):
    _, log_path = webserver
    text = log_path.read_text()
    assert "Serving dagster-webserver" in text
    # Python warnings (SomethingWarning: ...) and Dagster's logged ones (e.g. about a dagster.yaml in the folder).
    assert not re.search(r"\w+Warning\b|WARNING", text), text[-3000:]


def _loaded_widths(locator) -> list[int]:
    """naturalWidth of every <img> the locator matches (0 for one that did not load)."""
    return locator.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")


def _open_markdown(page, key: str):
    """Open a markdown metadata entry's dialog on an asset page; returns the dialog."""
    from playwright.sync_api import expect

    row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("img").first).to_be_visible()
    return dialog


@pytest.mark.browser
def test_dagster_ui_shows_the_graph_the_summary_the_figures_and_the_check(
    webserver, materialized, monkeypatch
):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
    from playwright.sync_api import expect, sync_playwright

    url, _ = webserver
    root, home, _ = materialized
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        check_passed = check_evaluation(instance).passed
    n_figures = len(list((root / "data" / "evaluation" / "figures").glob("*.png")))
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
            # The catalog lists every asset of the graph; a failed model-quality check marks `evaluation` red.
            page.goto(f"{url}/assets", wait_until="domcontentloaded")
            for name in ASSETS:
                link = page.locator(f'a[href="/assets/{name}"]')
                expect(link.first).to_be_visible()
                expect(link.first).to_contain_text(name)
            expect(page.get_by_role("img", name="check_failed")).to_have_count(0 if check_passed else 1)
            page.screenshot(path=str(ARTIFACTS / "ui-catalog.png"))
            # The evaluation page leads with the comparison table, rendered inline, then the figures.
            page.goto(f"{url}/assets/evaluation", wait_until="domcontentloaded")
            summary = page.get_by_role("row").filter(has=page.get_by_text(SUMMARY, exact=True)).first
            expect(summary.get_by_role("cell", name="global median", exact=True)).to_be_visible()
            expect(summary.get_by_role("cell", name="model", exact=True)).to_be_visible()
            expect(summary).to_contain_text(re.compile(r"0\.\d{1,3}\b"))  # rounded, not 0.52931034...
            keys = page.get_by_role("row").locator("td:first-child").all_inner_texts()
            assert keys.index(SUMMARY) < keys.index("figures") < keys.index("report"), keys
            metric = page.get_by_role("row").filter(has=page.get_by_text("model rel_p50 on heldout_probes"))
            expect(metric.first).to_contain_text(re.compile(r"\d\.\d"))
            page_images = page.locator("img")
            assert min(_loaded_widths(page_images), default=1) > 0, "an image on the page did not load"
            page.screenshot(path=str(ARTIFACTS / "ui-evaluation.png"))
            # Both markdown entries with pictures: every image decodes (the report's used to be broken links).
            for key in ("figures", "report"):
                dialog = _open_markdown(page, key)
                widths = _loaded_widths(dialog.locator("img"))
                assert len(widths) == n_figures >= 4 and min(widths) > 100, f"{key}: widths {widths}"
                page.screenshot(path=str(ARTIFACTS / f"ui-evaluation-{key}.png"))
                dialog.get_by_role("button", name="Close").click()
                expect(dialog).to_have_count(0)
            # The lineage view shows the check's outcome on the evaluation node.
            page.goto(f"{url}/assets/evaluation?view=lineage", wait_until="domcontentloaded")
            # The node's live data (latest event, checks) loads after the graph: seconds on a busy machine.
            expect(page.get_by_text(f"{int(check_passed)} / 1 Passed")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "ui-evaluation-lineage.png"))
        finally:
            browser.close()

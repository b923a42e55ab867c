"""Asset checks across the graph: which exist, that they block, and that a failing one stops downstream work."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from pingllm_assets.data.measurements import CHECK_PARSED, splits
from pingllm_assets.data.records import probe_records
from pingllm_assets.definitions import defs
from pingllm_assets.evaluation.evaluation import CHECK_BEATS_GLOBAL
from pingllm_assets.ingest.raw import CHECK_DOWNLOADED
from pingllm_assets.model.train import CHECK_LOSS
from pingllm_assets.resources import resources_for
from pingllm_core.data.splits import CHECK_NAMES
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA
from pingllm_core.settings import ProjectSettings


def specs_by_asset() -> dict[str, dict[str, dg.AssetCheckSpec]]:
    graph = defs.resolve_asset_graph()
    out: dict[str, dict[str, dg.AssetCheckSpec]] = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        out.setdefault(key.asset_key.to_user_string(), {})[key.name] = spec
    return out


def test_checks_exist_where_the_graph_needs_them_and_data_and_loss_gates_block():
    specs = specs_by_asset()
    assert set(specs) == {"raw_ping_dumps", "measurements", "splits", "trained_model", "evaluation"}
    assert set(specs["raw_ping_dumps"]) == {CHECK_DOWNLOADED} and set(specs["measurements"]) == {CHECK_PARSED}
    # Model quality against the global-median baseline shows in the UI but stops nothing.
    assert set(specs["evaluation"]) == {CHECK_BEATS_GLOBAL}
    assert not specs.pop("evaluation")[CHECK_BEATS_GLOBAL].blocking
    assert set(specs["splits"]) == set(CHECK_NAMES)
    assert {"train_non_empty", "heldout_probes_non_empty", "future_non_empty", "probes_disjoint",
            "future_after_cutoff", "train_before_cutoff"} <= set(specs["splits"])  # fmt: skip
    assert set(specs["trained_model"]) == {CHECK_LOSS} == {"heldout_rtt_loss_below_marginal"}
    for asset, checks in specs.items():
        for name, spec in checks.items():
            assert spec.blocking, f"{asset}.{name} does not block downstream assets"


def test_blocked_assets_are_downstream_of_the_checked_ones():
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("splits") in graph.get(dg.AssetKey("probe_records")).parent_keys
    assert dg.AssetKey("trained_model") in graph.get(dg.AssetKey("evaluation")).parent_keys


def write_sample(root, n: int = 40) -> None:
    """A tiny, valid sample.parquet: four probes pinging one destination once a minute."""
    start = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    table = pa.table(
        {
            "event_time": [start + dt.timedelta(minutes=i) for i in range(n)],
            "src_addr": [f"192.0.2.{1 + i % 4}" for i in range(n)],
            "dst_addr": ["198.51.100.7"] * n,
            "ip_version": [4] * n,
            "rtt": [10.0 + i for i in range(n)],
            "prb_id": [1 + i % 4 for i in range(n)],
        },
        schema=MEASUREMENT_SCHEMA,
    )
    (root / "splits").mkdir(parents=True)
    pq.write_table(table, root / "splits" / "sample.parquet")


def test_failing_blocking_check_on_real_splits_stops_probe_records(tmp_path):
    """The real `splits` asset with no held-out share: `heldout_probes_non_empty` fails (ERROR severity),
    the step fails with a reason naming the check, and the real `probe_records` does not run."""
    write_sample(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [splits, probe_records],
        resources=resources_for(ProjectSettings(data_root=tmp_path)),
        run_config={"ops": {"splits": {"config": {"heldout_probe_share": 0.0}}}},
        raise_on_error=False,
        instance=instance,
    )
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(CHECK_NAMES)
    failed = {name for name, e in evaluations.items() if not e.passed}
    assert failed == {"heldout_probes_non_empty"}
    bad = evaluations["heldout_probes_non_empty"]
    assert bad.severity == dg.AssetCheckSeverity.ERROR
    assert bad.metadata["detail"].value == "0 rows"
    # splits itself is recorded; what depends on it is not.
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"splits"}
    assert "probe_records" not in {e.step_key for e in result.get_step_success_events()}
    assert not (tmp_path / "records").exists()
    (failure,) = result.get_step_failure_events()
    reason = failure.step_failure_data.error.message
    assert "blocking asset check failed" in reason and "heldout_probes_non_empty" in reason
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert "check heldout_probes_non_empty failed: 0 rows" in logs  # the asset's own log line
    assert any("Dependencies for step probe_records failed" in m for m in logs)

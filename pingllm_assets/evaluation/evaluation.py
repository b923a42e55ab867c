"""Stage 5: evaluation of the trained model against baselines: metrics, figures, report, MLflow."""

import math
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pingllm_assets.metadata import png_markdown, rounded
from pingllm_assets.model.train import trained_checkpoint, trained_model
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.data import catalog as catalog_lib
from pingllm_core.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from pingllm_core.evaluation.report import HEADLINE, best_baseline, comparison_rows
from pingllm_core.model import model_card
from pingllm_core.model.tracking_mlflow import MlflowTracker, local_tracking_uri
from pingllm_core.paths import DataLayout
from pingllm_core.query.engine import QueryEngine

# Model quality beyond the loss gate: an ERROR-severity check, so a model that loses to the global median shows
# as failed in the catalog and the lineage view; not blocking, nothing downstream waits on it.
CHECK_BEATS_GLOBAL = "model_beats_global_median"
SUMMARY = "median relative error (lower is better)"  # the table the asset page leads with


class EvalAssetConfig(dg.Config):
    """Evaluation sizes (rows are drawn reproducibly from `seed`)."""

    run_name: str = ""  # checkpoint folder to evaluate; default: the one trained_model last wrote
    rows_per_split: int = 150
    context_rows: int = 40
    live_targets: int = 6
    seed: int = 0


@dg.asset(
    deps=[trained_model],
    backfill_policy=SINGLE_RUN,
    group_name="model",
    kinds={"matplotlib", "mlflow", "duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_BEATS_GLOBAL,
            asset="evaluation",
            description="held-out median relative error of the model below the global-median baseline's",
            blocking=False,
        )
    ],
)
def evaluation(
    context: dg.AssetExecutionContext,
    config: EvalAssetConfig,
    pingllm: PingllmSettings,
    catalog: DuckDBResource,
) -> dg.MaterializeResult:
    """Model vs baselines on held-out probes and future unseen pairs: metrics, the study's figures, a report."""
    layout = pingllm.layout
    ckpt_dir = trained_checkpoint(context, layout, config.run_name)
    engine = QueryEngine.load(ckpt_dir)
    truth = None
    if pingllm.source == "synthetic" and layout.ground_truth.exists():
        from pingllm_core.ingest.synth import SyntheticInternet

        truth = SyntheticInternet.load(layout.ground_truth)
    cfg = EvalConfig(
        rows_per_split=config.rows_per_split,
        context_rows=config.context_rows,
        live_targets=config.live_targets,
        seed=config.seed,
    )
    result = evaluate(engine, layout.splits, layout.evaluation, cfg, truth=truth, progress=context.log.info)
    model_card.update(ckpt_dir, "evaluation", model_card.evaluation_section(result.metrics["splits"]))
    rows = comparison_rows(result.metrics)
    mlflow_run_id = _track(layout, ckpt_dir, result, rows, context.run_id)
    with catalog.get_connection() as con:  # the catalog's `evaluation_metrics` table, one set per run
        catalog_rows = catalog_lib.record_evaluation(con, result.metrics, context.run_id, str(ckpt_dir))
    meta: dict = {
        SUMMARY: comparison_table(rows),
        "figures": png_markdown(result.figures),
        "report": dg.MetadataValue.md(result.report.read_text()),  # the table, figures and every number
    }
    for split, numbers in result.metrics["splits"].items():  # the headline numbers, plotted across runs
        for who, value in (
            ("model", numbers["model"][HEADLINE]),
            ("best baseline", best_baseline(numbers)[1]),
        ):
            if math.isfinite(value):
                meta[f"{who} {HEADLINE} on {split}"] = rounded(value)
    meta["report_path"] = dg.MetadataValue.path(str(result.report))
    meta["catalog_rows"] = catalog_rows  # SELECT * FROM evaluation_metrics WHERE run_id = '<this run>'
    meta["mlflow_run_id"] = mlflow_run_id
    meta["seconds"] = rounded(result.seconds)
    held = result.metrics["splits"].get("heldout_probes", {})
    model_err = held.get("model", {}).get("rel_p50", float("nan"))
    global_err = held.get("global_median", {}).get("rel_p50", float("nan"))
    beats = bool(model_err < global_err)
    check = dg.AssetCheckResult(
        check_name=CHECK_BEATS_GLOBAL,
        passed=beats,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"model_rel_p50": float(model_err), "global_median_rel_p50": float(global_err)},
        description=None
        if beats
        else (
            f"the model's median relative error on held-out probes ({model_err:.3f}) is not below the global "
            f"median's ({global_err:.3f}): train longer or use a larger tier"
        ),
    )
    return dg.MaterializeResult(metadata=meta, check_results=[check])


def comparison_table(rows: list[dict]) -> dg.TableMetadataValue:
    """The model against each baseline per split, as a table the asset page shows inline."""
    splits = [k for k in rows[0] if k != "method"] if rows else []
    # Names with spaces wrap, so the table fits beside the key and timestamp columns of the asset page.
    label = {k: k.replace("_", " ") for k in ["method", *splits]}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(label["method"], "string")]
        + [dg.TableColumn(label[s], "float", description=f"median relative error on {s}") for s in splits]
    )
    records = [
        dg.TableRecord({label[k]: (str(v).replace("_", " ") if k == "method" else v) for k, v in r.items()})
        for r in rows
    ]
    return dg.MetadataValue.table(records, schema=schema)


def _track(layout: DataLayout, ckpt_dir: Path, result: EvalResult, rows: list[dict], run_id: str) -> str:
    """Add the evaluation to the checkpoint's MLflow run: headline numbers, one comparison table, figures."""
    run_id_file = ckpt_dir / "mlflow_run_id.txt"
    if not run_id_file.exists():
        return ""
    tracker = MlflowTracker.resume(local_tracking_uri(layout.root), run_id_file.read_text().strip())
    headline = {}
    for split, numbers in result.metrics["splits"].items():
        # Unprefixed names keep them in MLflow's one chart section; sorted after the loss curves.
        headline[f"{HEADLINE}_{split}_model"] = numbers["model"][HEADLINE]
        headline[f"{HEADLINE}_{split}_best_baseline"] = best_baseline(numbers)[1]
    tracker.log_metrics({k: v for k, v in headline.items() if math.isfinite(v)}, step=0)
    # MLflow appends to a table logged again under the same name: each evaluation's rows carry its run id.
    table = [{"dagster_run": run_id[:8], **r} for r in rows]
    tracker.log_table(table, artifact_file="evaluation/comparison.json")
    for path in [*result.figures, result.report, layout.evaluation / "metrics.json"]:
        tracker.log_artifact(path, artifact_path="evaluation")
    tracker.finish()
    return tracker.run_id

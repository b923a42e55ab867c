"""Stage 5: evaluation of the trained model against baselines: metrics, figures, report, MLflow."""

import dagster as dg

from pingllm_assets.metadata import flat_numbers, png_markdown
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_assets.train import TrainAssetConfig, trained_model
from pingllm_core import model_card
from pingllm_core.evaluate import EvalConfig, evaluate
from pingllm_core.query import QueryEngine
from pingllm_core.tracking_mlflow import MlflowTracker, local_tracking_uri

# Model sanity beyond the loss gate: a WARN (non-blocking) check, so a weak model is visible in the UI
# without stopping anything downstream.
CHECK_BEATS_GLOBAL = "model_beats_global_median"


class EvalAssetConfig(dg.Config):
    """Evaluation sizes (rows are drawn reproducibly from `seed`)."""

    run_name: str = ""  # checkpoint folder to evaluate; default: the default tier's folder
    rows_per_split: int = 150
    context_rows: int = 40
    live_targets: int = 6
    seed: int = 0


@dg.asset(
    deps=[trained_model],
    backfill_policy=SINGLE_RUN,
    group_name="model",
    kinds={"matplotlib", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_BEATS_GLOBAL,
            asset="evaluation",
            description="held-out median relative error of the model below the global-median baseline's",
        )
    ],
)
def evaluation(
    context: dg.AssetExecutionContext, config: EvalAssetConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Model vs baselines on held-out probes and future unseen pairs: metrics, the study's figures, a report."""
    layout = pingllm.layout
    ckpt_dir = layout.checkpoints / (config.run_name or TrainAssetConfig().tier)
    engine = QueryEngine.load(ckpt_dir)
    truth = None
    if pingllm.source == "synthetic" and layout.ground_truth.exists():
        from pingllm_core.synth import SyntheticInternet

        truth = SyntheticInternet.load(layout.ground_truth)
    cfg = EvalConfig(
        rows_per_split=config.rows_per_split,
        context_rows=config.context_rows,
        live_targets=config.live_targets,
        seed=config.seed,
    )
    result = evaluate(engine, layout.splits, layout.evaluation, cfg, truth=truth, progress=context.log.info)
    model_card.update(ckpt_dir, "evaluation", model_card.evaluation_section(result.metrics["splits"]))
    run_id_file = ckpt_dir / "mlflow_run_id.txt"
    if run_id_file.exists():  # figures and numbers join the training run in MLflow
        tracker = MlflowTracker.resume(local_tracking_uri(layout.root), run_id_file.read_text().strip())
        tracker.log_metrics(flat_numbers("eval", result.metrics["splits"]), step=0)
        for path in [*result.figures, result.report, layout.evaluation / "metrics.json"]:
            tracker.log_artifact(path, artifact_path="evaluation")
        tracker.finish()
    meta = flat_numbers("", result.metrics["splits"])
    meta = {k: v for k, v in meta.items() if "/model/" in k or "/ground_truth" in k or k.count("/") == 1}
    meta.update(
        flat_numbers(
            "",
            {
                k: result.metrics.get(k, {})
                for k in ("timestamp_logp", "pair_kl", "live_kl", "mode_accuracy", "mode_nll")
            },
        )
    )
    meta["figures"] = png_markdown(result.figures)
    meta["report"] = dg.MetadataValue.md(result.report.read_text())
    meta["report_path"] = dg.MetadataValue.path(str(result.report))
    meta["seconds"] = result.seconds
    held = result.metrics["splits"].get("heldout_probes", {})
    model_err = held.get("model", {}).get("rel_p50", float("nan"))
    global_err = held.get("global_median", {}).get("rel_p50", float("nan"))
    beats = bool(model_err < global_err)
    check = dg.AssetCheckResult(
        check_name=CHECK_BEATS_GLOBAL,
        passed=beats,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"model_rel_p50": float(model_err), "global_median_rel_p50": float(global_err)},
        description=None
        if beats
        else (
            f"the model's median relative error on held-out probes ({model_err:.3f}) is not below the global "
            f"median's ({global_err:.3f}): train longer or use a larger tier"
        ),
    )
    return dg.MaterializeResult(metadata=meta, check_results=[check])

"""Beyond the study: poisoning detection (property 4): inject liars into train, detect them, clean, compare."""

import dagster as dg

from pingllm_assets.data.records import probe_records
from pingllm_assets.metadata import flat_numbers, png_markdown
from pingllm_assets.model.train import trained_model
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.experiments.poisoning import ExperimentConfig, run_experiment
from pingllm_core.experiments.poisoning_inject import PoisonConfig


class PoisoningConfig(dg.Config):
    """Liars injected into a copy of the train split, and the two small comparison models."""

    liar_share: float = 0.12  # share of probes that lie (inflate / deflate / fake destinations, round-robin)
    sybil_count: int = 6  # Sybil identities in one new prefix, all claiming one target is ~1 ms away
    drop_share: float = 0.15  # cleaning: probes dropped from the top of the combined suspicion score
    train_steps: int = 60  # steps of each comparison model (poisoned vs cleaned); 0 = baselines only
    model_rows: int = 30  # held-out rows each model predicts
    seed: int = 0


@dg.asset(
    deps=[probe_records, trained_model],
    backfill_policy=SINGLE_RUN,
    group_name="beyond",
    kinds={"jax", "matplotlib"},
)
def poisoning_report(
    context: dg.AssetExecutionContext, config: PoisoningConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Detection ROC-AUC / PR-AUC / TPR@5% FPR per detector and liar kind; accuracy poisoned vs cleaned."""
    layout = pingllm.layout
    world = None
    if pingllm.source == "synthetic" and layout.ground_truth.exists():
        from pingllm_core.ingest.synth import SyntheticInternet

        world = SyntheticInternet.load(layout.ground_truth)  # only for the below-light-floor diagnostic
    cfg = ExperimentConfig(
        poison=PoisonConfig(liar_share=config.liar_share, sybil_count=config.sybil_count),
        drop_share=config.drop_share,
        train_steps=config.train_steps,
        model_rows=config.model_rows,
        seed=config.seed,
    )
    out = layout.poisoning
    result = run_experiment(layout.splits, out, cfg, world=world, progress=context.log.info)
    det = result.metrics["detection"]
    context.log.info(
        "poisoning: ROC-AUC "
        + ", ".join(f"{k} {v['all'].get('roc_auc', float('nan')):.3f}" for k, v in det.items())
    )
    meta = flat_numbers("", result.metrics)
    meta["figure"] = png_markdown([result.figure])
    meta["path"] = dg.MetadataValue.path(str(out))
    return dg.MaterializeResult(metadata=meta)

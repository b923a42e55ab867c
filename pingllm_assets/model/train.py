"""Stage 4: the trained checkpoint (JAX/Flax NNX, optax, orbax, Grain), tracked in MLflow."""

import math
import shutil
from pathlib import Path

import dagster as dg

from pingllm_assets.data.records import probe_records
from pingllm_assets.metadata import png_markdown
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.data.loader import iter_eval_batches, make_train_iter
from pingllm_core.evaluation.figures import fig_loss_curve
from pingllm_core.evaluation.token_losses import rtt_byte_losses, rtt_marginal_loss, unigram_cross_entropy
from pingllm_core.model import model_card
from pingllm_core.model.checkpoint import load_checkpoint
from pingllm_core.model.recipe import Recipe
from pingllm_core.model.tracking_mlflow import MlflowTracker
from pingllm_core.model.train import train
from pingllm_core.paths import DataLayout

CHECK_LOSS = "heldout_rtt_loss_below_marginal"
RUN_NAME = "run_name"  # trained_model's metadata key naming its checkpoint folder
_RECIPE = Recipe()  # the defaults


class TrainAssetConfig(dg.Config):
    """The training recipe's knobs (`pingllm_core.model.recipe.Recipe`: what each does, and the defaults),
    the held-out batches of the loss check, and the checkpoint folder."""

    tier: str = _RECIPE.tier
    steps: int = _RECIPE.steps
    batch_size: int = _RECIPE.batch_size
    seq_len: int = _RECIPE.seq_len
    lr: float = _RECIPE.lr
    warmup_steps: int = _RECIPE.warmup_steps
    dropout: float = _RECIPE.dropout  # -1: the tier's own
    seed: int = _RECIPE.seed
    loader_workers: int = _RECIPE.loader_workers
    eval_batches: int = 8  # held-out batches for the eval losses
    rtt_loss_weight: float = _RECIPE.rtt_loss_weight
    field_shuffle_share: float = _RECIPE.field_shuffle_share
    src_remap_share: float = _RECIPE.src_remap_share
    short_context_share: float = _RECIPE.short_context_share
    run_name: str = ""  # checkpoint folder under <data root>/checkpoints; default: the tier
    restart: bool = False  # wipe that folder first instead of resuming from it
    init_from: str = _RECIPE.init_from  # continue from another checkpoint's weights with a fresh schedule

    def recipe(self) -> Recipe:
        """The core recipe these fields set."""
        return Recipe(**{name: getattr(self, name) for name in Recipe.knobs()})


@dg.asset(
    deps=[probe_records],
    backfill_policy=SINGLE_RUN,
    group_name="model",
    kinds={"jax", "mlflow"},
    pool="training",
    check_specs=[dg.AssetCheckSpec(CHECK_LOSS, asset="trained_model", blocking=True)],
)
def trained_model(
    context: dg.AssetExecutionContext, config: TrainAssetConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """A decoder-only transformer checkpoint trained on the train split's probe records."""
    layout = pingllm.layout
    run_name = config.run_name or config.tier
    ckpt_dir = layout.checkpoints / run_name
    if config.restart and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    model_cfg, loader_cfg, train_cfg = config.recipe().configs()
    # Held-out probes scored as queries ask: fields in query order, real addresses.
    scoring = loader_cfg.scoring()
    eval_batches = list(iter_eval_batches(layout.records / "heldout_probes", scoring, config.eval_batches))
    tracker = MlflowTracker.local(layout.root, experiment="pingllm", run_name=run_name)
    tracker.set_tags({"dagster_run_id": context.run_id, "tier": config.tier})
    try:
        result = train(
            model_cfg,
            train_cfg,
            make_iter=lambda: make_train_iter(layout.records / "train", loader_cfg),
            ckpt_dir=ckpt_dir,
            tracker=tracker,
            eval_batches=eval_batches,
            progress=context.log.info,
        )
        unigram = unigram_cross_entropy(eval_batches)
        fit = list(iter_eval_batches(layout.records / "train", scoring, 4 * config.eval_batches))
        marginal_rtt = rtt_marginal_loss(eval_batches, fit)
        by_byte = rtt_byte_losses(load_checkpoint(ckpt_dir)[0], eval_batches, fit)
        card = model_card.training_section(
            layout.splits / "train.parquet", tier=config.tier, params=result.n_params, steps=result.step,
            eval_rtt_loss=result.eval_rtt_loss, marginal_rtt_loss=marginal_rtt,
        )  # fmt: skip
        model_card.write(ckpt_dir, {"training": card})  # what `pingllm info` shows; evaluation adds its part
        curve = fig_loss_curve(
            result.history,
            ckpt_dir / "loss_curve.png",
            eval_history=result.eval_history,
            rtt_history=result.rtt_history,
            references={
                "bar for held-out loss: unigram model": unigram,
                "bar for held-out RTT loss: one RTT distribution": marginal_rtt,
            },
        )
        tracker.log_artifact(curve)
        tracker.log_metrics(
            {"unigram_loss": unigram, "marginal_rtt_loss": marginal_rtt, **by_byte}, step=result.step
        )
        (ckpt_dir / "mlflow_run_id.txt").write_text(tracker.run_id)
        tracker.finish()
    except BaseException:
        tracker.finish(status="FAILED")
        raise
    final_loss = result.history[-1][1] if result.history else float("nan")
    check_loss = result.eval_loss if result.eval_loss is not None else final_loss
    rtt_loss = result.eval_rtt_loss if result.eval_rtt_loss is not None else float("nan")
    # The bar that matters: a model whose held-out RTT loss is not below one global RTT distribution answers
    # every query with that distribution, however low its loss on the address and time tokens.
    passed = bool(math.isfinite(check_loss) and check_loss < unigram and rtt_loss < marginal_rtt)
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(str(ckpt_dir)),
            RUN_NAME: run_name,  # the folder under <data root>/checkpoints that later stages read
            "tier": config.tier,
            "params": result.n_params,
            "step": result.step,
            "train_loss": float(final_loss),
            "eval_loss": float(check_loss),
            "unigram_loss": float(unigram),
            # RTT tokens only: below the marginal bar the model's RTTs depend on the pair and the context.
            "eval_rtt_loss": float(rtt_loss),
            "marginal_rtt_loss": float(marginal_rtt),
            "rtt_loss_below_marginal": round(float(marginal_rtt - rtt_loss), 3),  # nats per RTT byte
            # Byte 1 (the RTT's quarter octave) carries what the model knows; byte 2 is near-uniform jitter.
            **{k: round(v, 3) for k, v in by_byte.items()},
            "tokens_per_s": float(result.tokens_per_s),
            "seconds": round(result.seconds, 1),
            "mlflow_run_id": tracker.run_id,
            "loss_curve": png_markdown([curve]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_LOSS,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "eval_rtt_loss": float(rtt_loss),
                    "marginal_rtt_loss": float(marginal_rtt),
                    "eval_loss": float(check_loss),
                    "unigram_loss": float(unigram),
                },
                description=None
                if passed
                else (
                    f"held-out RTT loss {rtt_loss:.3f} vs one global RTT distribution {marginal_rtt:.3f}, held-out "
                    f"loss {check_loss:.3f} vs unigram {unigram:.3f}: the model must beat both (train longer or "
                    "use a larger tier); evaluation is blocked until it does"
                ),
            )
        ],
    )


def trained_checkpoint(context: dg.AssetExecutionContext, layout: DataLayout, run_name: str = "") -> Path:
    """The checkpoint folder a later stage reads: `run_name`'s under <data root>/checkpoints when given, else
    the one the latest `trained_model` materialization recorded, else the default tier's (no record)."""
    if not run_name:
        event = context.instance.get_latest_materialization_event(trained_model.key)
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        recorded = meta.get(RUN_NAME)
        run_name = str(recorded.value) if recorded is not None else _RECIPE.tier
    return layout.checkpoints / run_name

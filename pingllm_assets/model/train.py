"""Stage 4: the trained checkpoint (JAX/Flax NNX, optax, orbax, Grain), tracked in MLflow."""

import math
import shutil

import dagster as dg

from pingllm_assets.data.records import probe_records
from pingllm_assets.metadata import png_markdown
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.data.loader import RECIPE_AUGMENTATION, LoaderConfig, iter_eval_batches, make_train_iter
from pingllm_core.evaluation.evaluate import rtt_byte_losses, rtt_marginal_loss, unigram_cross_entropy
from pingllm_core.evaluation.figures import fig_loss_curve
from pingllm_core.model import model_card
from pingllm_core.model.checkpoint import load_checkpoint
from pingllm_core.model.tracking_mlflow import MlflowTracker
from pingllm_core.model.train import RECIPE_RTT_LOSS_WEIGHT, TrainConfig, train
from pingllm_core.model.transformer import model_config

CHECK_LOSS = "heldout_rtt_loss_below_marginal"


class TrainAssetConfig(dg.Config):
    """Model tier, step budget, optimiser and data recipe (SPEC section 6; defaults from the ablations in
    docs/ABLATIONS.md: the demo's 2-core budget)."""

    tier: str = "tiny"  # tiny (CI, CPU minutes) | small (~10M, laptop) | base (the study's 85M shape)
    steps: int = 2400  # optimiser steps in this materialization (total, when resuming)
    batch_size: int = 8  # packed rows per step (small batches: twice the steps in the same CPU time)
    seq_len: int = 256  # tokens per packed row = the model's context; 1024 (the study's) for small/base
    lr: float = 3e-3  # peak learning rate; tiny models want more than the study's 1e-4 (base)
    warmup_steps: int = 50
    dropout: float = -1.0  # -1: the tier's own; long runs want some (it keeps unseen probes' answers honest)
    seed: int = 0
    loader_workers: int = 0  # Grain worker processes; 0 = in-process
    eval_batches: int = 8  # held-out batches for the eval losses
    rtt_loss_weight: float = RECIPE_RTT_LOSS_WEIGHT  # the RTT bytes count this many times in the objective
    # Measurements in a random field order (the rest in query order): fewer is better for RTT answers (see
    # docs/ABLATIONS.md), some are needed for the inverse queries (destinations, when, counterpart).
    field_shuffle_share: float = RECIPE_AUGMENTATION["field_shuffle_share"]
    # Contexts whose sources become unseen hosts in their network.
    src_remap_share: float = RECIPE_AUGMENTATION["src_remap_share"]
    short_context_share: float = RECIPE_AUGMENTATION["short_context_share"]  # contexts of 1-8 measurements
    run_name: str = ""  # checkpoint folder under <data root>/checkpoints; default: the tier
    restart: bool = False  # wipe that folder first instead of resuming from it
    init_from: str = ""  # continue from another checkpoint's weights with a fresh schedule


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
    overrides = {"dropout": config.dropout} if config.dropout >= 0 else {}
    model_cfg = model_config(config.tier, max_len=config.seq_len, **overrides)
    loader_cfg = LoaderConfig(
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        workers=config.loader_workers,
        field_shuffle_share=config.field_shuffle_share,
        src_remap_share=config.src_remap_share,
        short_context_share=config.short_context_share,
    )
    train_cfg = TrainConfig(
        steps=config.steps,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        log_every=max(1, config.steps // 20),
        ckpt_every=max(1, config.steps // 4),
        eval_every=max(1, config.steps // 4),
        init_from=config.init_from or None,
        rtt_loss_weight=config.rtt_loss_weight,
    )
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

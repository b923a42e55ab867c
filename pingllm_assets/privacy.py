"""Beyond the study: a membership-inference audit of the trained model (property 5 of the study)."""

import dagster as dg

from pingllm_assets.metadata import flat_numbers, png_markdown
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_assets.train import TrainAssetConfig, trained_model
from pingllm_core.checkpoint import load_checkpoint
from pingllm_core.privacy import fig_membership_roc, membership_audit, probe_loss_table


class MembershipAuditConfig(dg.Config):
    """Probes and contexts scored on each side (train = members, heldout_probes = non-members)."""

    run_name: str = ""  # checkpoint folder to audit; default: the default tier's folder
    max_probes: int = 60
    contexts_per_probe: int = 2
    seed: int = 0


@dg.asset(deps=[trained_model], backfill_policy=SINGLE_RUN, group_name="beyond", kinds={"jax", "matplotlib"})
def membership_audit_report(
    context: dg.AssetExecutionContext, config: MembershipAuditConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Loss-based membership inference: can an attacker tell train probes from held-out ones by model loss?"""
    layout = pingllm.layout
    model, cfg, step = load_checkpoint(layout.checkpoints / (config.run_name or TrainAssetConfig().tier))
    kw = dict(max_probes=config.max_probes, contexts_per_probe=config.contexts_per_probe,
              seq_len=cfg.max_len, seed=config.seed, progress=context.log.info)  # fmt: skip
    members = probe_loss_table(model, layout.records / "train", **kw)
    outsiders = probe_loss_table(model, layout.records / "heldout_probes", **kw)
    audit = membership_audit(members.loss, outsiders.loss)
    out = layout.root / "privacy"
    out.mkdir(parents=True, exist_ok=True)
    fig = fig_membership_roc(members.loss, outsiders.loss, out / "membership_roc.png")
    context.log.info(
        f"membership AUC {audit['auc']:.3f} on {len(members.loss)} vs {len(outsiders.loss)} probes"
    )
    return dg.MaterializeResult(
        metadata={**flat_numbers("", audit), "checkpoint_step": step, "roc": png_markdown([fig])}
    )

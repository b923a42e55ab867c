"""Beyond the study: a membership-inference audit of the trained model, and a mitigation (property 5)."""

import json
import math
import re

import dagster as dg

from pingllm_assets.data.records import probe_records
from pingllm_assets.metadata import flat_numbers, png_markdown
from pingllm_assets.model.train import trained_checkpoint, trained_model
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.evaluation.figures import fig_membership_roc, fig_mitigation
from pingllm_core.evaluation.metrics import membership_audit
from pingllm_core.experiments.privacy import probe_loss_table
from pingllm_core.experiments.privacy_dp import (
    MitigationConfig,
    markdown_table,
    run_mitigation,
)
from pingllm_core.model.checkpoint import load_checkpoint


class MembershipAuditConfig(dg.Config):
    """Probes and contexts scored on each side (train = members, heldout_probes = non-members)."""

    run_name: str = ""  # checkpoint folder to audit; default: the one trained_model last wrote
    max_probes: int = 60
    contexts_per_probe: int = 2
    seed: int = 0


@dg.asset(deps=[trained_model], backfill_policy=SINGLE_RUN, group_name="beyond", kinds={"jax", "matplotlib"})
def membership_audit_report(
    context: dg.AssetExecutionContext, config: MembershipAuditConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Loss-based membership inference: can an attacker tell train probes from held-out ones by model loss?"""
    layout = pingllm.layout
    model, cfg, step = load_checkpoint(trained_checkpoint(context, layout, config.run_name))
    kw = dict(max_probes=config.max_probes, contexts_per_probe=config.contexts_per_probe,
              seq_len=cfg.max_len, seed=config.seed, progress=context.log.info)  # fmt: skip
    members = probe_loss_table(model, layout.records / "train", **kw)
    outsiders = probe_loss_table(model, layout.records / "heldout_probes", **kw)
    audit = membership_audit(members.loss, outsiders.loss)
    out = layout.privacy
    out.mkdir(parents=True, exist_ok=True)
    fig = fig_membership_roc(members.loss, outsiders.loss, out / "membership_roc.png")
    context.log.info(
        f"membership AUC {audit['auc']:.3f} on {len(members.loss)} vs {len(outsiders.loss)} probes"
    )
    return dg.MaterializeResult(
        metadata={**flat_numbers("", audit), "checkpoint_step": step, "roc": png_markdown([fig])}
    )


class PrivacyMitigationConfig(dg.Config):
    """The before/after experiment (see pingllm_core.experiments.privacy_dp.MitigationConfig for every field)."""

    n_members: int = 24  # train probes both models are trained on; the other probes are non-members
    expected_batch: float = 8.0  # probes per step on average (Poisson sampling rate q = this / n_members)
    steps: int = 60  # steps of each run (demo-sized; >= 200 for numbers worth quoting)
    lr: float = 3e-3
    seq_len: int = 256
    clip_norm: float = 1.0  # per-probe gradient bound C
    # One DP-SGD run per sigma (0 = clipping only), after the plain run.
    noise_multipliers: list[float] = [0.5]
    delta: float = 1e-5
    max_nonmembers: int = 120
    contexts_per_probe: int = 2
    seed: int = 0


@dg.asset(deps=[probe_records], backfill_policy=SINGLE_RUN, group_name="beyond", kinds={"jax", "matplotlib"})
def privacy_mitigation_report(
    context: dg.AssetExecutionContext, config: PrivacyMitigationConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Probe-level DP-SGD vs plain training on the same probes: membership AUC before/after, accuracy cost."""
    layout = pingllm.layout
    cfg = MitigationConfig(**{**config.model_dump(), "noise_multipliers": tuple(config.noise_multipliers)})
    runs = run_mitigation(layout.records / "train", layout.records / "heldout_probes", cfg, context.log.info)
    out = layout.privacy
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    (out / "mitigation.md").write_text(table)
    rows = [r.row() for r in runs]
    (out / "mitigation.json").write_text(json.dumps(rows, indent=2))  # epsilon inf -> Infinity
    fig = fig_mitigation(runs, out / "mitigation_roc.png")
    numbers = {}
    for r in rows:
        slug = re.sub(r"[^a-z0-9]+", "_", r["variant"].lower()).strip("_")
        numbers.update(
            flat_numbers(slug, {k: v for k, v in r.items() if not (isinstance(v, float) and math.isinf(v))})
        )
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(table),
            **numbers,
            "auc_drop": rows[0]["auc"] - rows[-1]["auc"],
            "heldout_nll_cost": rows[-1]["heldout_nll"] - rows[0]["heldout_nll"],
            "figures": png_markdown([fig]),
        }
    )

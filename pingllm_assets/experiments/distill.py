"""Beyond the study: distilled tiers (property 6): a small student distilled from the trained model.

At demo scale the teacher is the `tiny` checkpoint and the student a 1-layer d=32 model; in real use the
teacher is `base` and the student `small` (set `student_tier` or the shape fields). The table compares
teacher, distilled student and the same student trained from scratch: accuracy vs parameters vs CPU
query latency, so a user can pick the tier that fits their device.
"""

import dataclasses

import dagster as dg

from pingllm_assets.data.records import probe_records
from pingllm_assets.metadata import flat_numbers, png_markdown
from pingllm_assets.model.train import trained_checkpoint, trained_model
from pingllm_assets.partitions import SINGLE_RUN
from pingllm_assets.resources import PingllmSettings
from pingllm_core.evaluation.evaluate import load_split
from pingllm_core.experiments.distill import TEST_STUDENT
from pingllm_core.experiments.distill_tiers import TiersConfig, build_tiers
from pingllm_core.model.transformer import model_config


class DistilledTiersConfig(dg.Config):
    """Teacher, student shape, distillation budget and the comparison's sizes (defaults: ~2 min on 2 CPUs).

    The fields shared with the core `TiersConfig` keep its meaning (and, but for the asset's smaller
    budget, its defaults); `to_core()` converts.
    """

    run_name: str = ""  # teacher checkpoint folder under <data root>/checkpoints; default: trained_model's
    student_tier: str = ""  # take the student's shape from this tier (e.g. "small" for a `base` teacher)
    d_model: int = TEST_STUDENT["d_model"]  # student shape when student_tier is empty
    n_layers: int = TEST_STUDENT["n_layers"]
    n_heads: int = TEST_STUDENT["n_heads"]
    d_head: int = TEST_STUDENT["d_head"]
    d_mlp: int = TEST_STUDENT["d_mlp"]
    steps: int = 60  # optimiser steps for each student (distilled and from-scratch control)
    lr: float = TiersConfig.lr
    temperature: float = TiersConfig.temperature  # softening of both distributions in the KL term
    alpha: float = TiersConfig.alpha  # weight of the KL term; 1 - alpha on the hard-target cross-entropy
    batch_size: int = TiersConfig.batch_size
    seq_len: int = 0  # tokens per packed row; 0 = the teacher's max_len
    eval_batches: int = TiersConfig.eval_batches  # held-out batches for the eval loss
    rows: int = 30  # held-out rows for the median relative error
    repeats: int = 10  # timed predict calls (after warm-up) per model
    rank_candidates: int = 100  # destinations ranked in the rank-latency column; 0 skips it
    seed: int = TiersConfig.seed

    def to_core(self) -> TiersConfig:
        """The core config: same-named fields copied; the student shape, `rows` and `seq_len` translated."""
        shape = model_config(self.student_tier) if self.student_tier else self
        names = type(self).model_fields
        same = {f.name: getattr(self, f.name) for f in dataclasses.fields(TiersConfig) if f.name in names}
        return TiersConfig(**same | {"student": {f: getattr(shape, f) for f in TEST_STUDENT}, "n_rows": self.rows,
                                     "seq_len": self.seq_len or None})  # fmt: skip


@dg.asset(
    deps=[trained_model, probe_records],
    backfill_policy=SINGLE_RUN,
    group_name="beyond",
    kinds={"jax", "matplotlib"},
)
def distilled_tiers(
    context: dg.AssetExecutionContext, config: DistilledTiersConfig, pingllm: PingllmSettings
) -> dg.MaterializeResult:
    """Teacher vs distilled student vs scratch student: params, eval loss, RTT error, CPU query latency."""
    layout = pingllm.layout
    out = layout.distill
    run = build_tiers(
        trained_checkpoint(context, layout, config.run_name),
        layout.records / "train",
        layout.records / "heldout_probes",
        load_split(layout.splits / "heldout_probes.parquet"),
        out,
        config.to_core(),
        progress=context.log.info,
    )
    numbers = {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in run.table.rows}
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(run.table.markdown),
            **flat_numbers("", numbers),
            "teacher_step": run.teacher_step,
            "distill_seconds": round(run.distilled.seconds, 1),
            "scratch_seconds": round(run.scratch.seconds, 1),
            "path": dg.MetadataValue.path(str(out)),
            "tiers": png_markdown([run.table.figure]),
        }
    )

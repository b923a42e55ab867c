"""The training recipe: one path from a tier and its knobs to the model, loader and train configs.

`trained_model` (its Dagster config holds the knobs) and the ablation script (`experiments/ablation.py`, whose
variants override fields of the three configs) both build their configs with `Recipe.configs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.model.train import TrainConfig
from pingllm_core.model.transformer import ModelConfig, model_config

__all__ = ["RECIPE_AUGMENTATION", "RECIPE_RTT_LOSS_WEIGHT", "Recipe"]

# The training recipe's augmentation (docs/ABLATIONS.md), for every model trained on the records; the
# LoaderConfig defaults are the plain stream (every measurement in a random field order, no augmentation).
RECIPE_AUGMENTATION = {"field_shuffle_share": 0.2, "src_remap_share": 0.3, "short_context_share": 0.3}
RECIPE_RTT_LOSS_WEIGHT = 4.0  # the training recipe's weight on the RTT bytes (docs/ABLATIONS.md)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Model tier, step budget, optimiser and data recipe of one training run (SPEC section 6; defaults from
    the ablations in docs/ABLATIONS.md: the demo's 2-core budget)."""

    tier: str = "tiny"  # tiny (CI, CPU minutes) | small (~10M, laptop) | base (the study's 85M shape)
    steps: int = 2400  # optimiser steps in this materialization (total, when resuming)
    batch_size: int = 8  # packed rows per step (small batches: twice the steps in the same CPU time)
    seq_len: int = 256  # tokens per packed row = the model's context; 1024 (the study's) for small/base
    lr: float = 3e-3  # peak learning rate; tiny models want more than the study's 1e-4 (base)
    warmup_steps: int = 50
    dropout: float = -1.0  # -1: the tier's own; long runs want some (it keeps unseen probes' answers honest)
    seed: int = 0  # the loader's and the model's (init, dropout)
    loader_workers: int = 0  # Grain worker processes; 0 = in-process
    rtt_loss_weight: float = RECIPE_RTT_LOSS_WEIGHT  # the RTT bytes count this many times in the objective
    # Measurements in a random field order (the rest in query order): fewer is better for RTT answers (see
    # docs/ABLATIONS.md), some are needed for the inverse queries (destinations, when, counterpart).
    field_shuffle_share: float = RECIPE_AUGMENTATION["field_shuffle_share"]
    # Contexts whose sources become unseen hosts in their network.
    src_remap_share: float = RECIPE_AUGMENTATION["src_remap_share"]
    short_context_share: float = RECIPE_AUGMENTATION["short_context_share"]  # contexts of 1-8 measurements
    init_from: str = ""  # continue from another checkpoint's weights with a fresh schedule
    # Any field of ModelConfig, LoaderConfig or TrainConfig, over what the knobs above set (the ablations).
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    loader: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def configs(self) -> tuple[ModelConfig, LoaderConfig, TrainConfig]:
        """(model, loader, train) configs. The model's context is the loader's rows; progress lines every
        steps / 20, checkpoints and eval passes every steps / 4, unless `train` sets them."""
        loader = LoaderConfig(
            **{
                "seq_len": self.seq_len,
                "batch_size": self.batch_size,
                "seed": self.seed,
                "workers": self.loader_workers,
                "field_shuffle_share": self.field_shuffle_share,
                "src_remap_share": self.src_remap_share,
                "short_context_share": self.short_context_share,
            }
            | dict(self.loader)
        )
        dropout = {"dropout": self.dropout} if self.dropout >= 0 else {}
        model = model_config(self.tier, **({"max_len": loader.seq_len} | dropout | dict(self.model)))
        train = {
            "steps": self.steps,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "seed": self.seed,
            "init_from": self.init_from or None,
            "rtt_loss_weight": self.rtt_loss_weight,
        } | dict(self.train)
        steps = train["steps"]
        every = {
            "log_every": max(1, steps // 20),
            "ckpt_every": max(1, steps // 4),
            "eval_every": max(1, steps // 4),
        }
        return model, loader, TrainConfig(**(every | train))

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The fields a run config sets (every field but the `model`, `loader` and `train` overrides)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("model", "loader", "train"))

"""Pure training-step pieces (loss, optimizer, jitted sharded step): jax, flax and optax only.

Kept apart from `train.py` so `benchmarks/train_step.py` runs on a bare GPU host without orbax or grain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pingllm_core.data.tokens import after_rtt_start
from pingllm_core.model.transformer import ModelConfig, Transformer

Batch = dict[str, Any]  # {"tokens", "segment_ids", "positions"} int32 [B, L], "weights" float32 [B, L]
BATCH_KEYS = ("tokens", "segment_ids", "positions", "weights")


def lr_schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=lr * min_lr_ratio,
    )


def make_tx(
    schedule: optax.Schedule, *, weight_decay: float, grad_clip: float, b1: float, b2: float
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW."""
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay),
    )


def rtt_byte_mask(tokens_BxL: jax.Array) -> jax.Array:
    """True on the two RTT bytes after each <RttStart>: where the grammar already says an RTT comes next."""
    return after_rtt_start(tokens_BxL, 1, jnp) | after_rtt_start(tokens_BxL, 2, jnp)


def xent_sums(logits_BxLxV: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Weighted next-token NLL sums, float32: {"nll", "weight"} over all targets, and {"rtt_nll",
    "rtt_weight"} over the RTT bytes only (what a query asks for most)."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32))
    target_BxL = batch["tokens"][:, 1:]
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, target_BxL[..., None], axis=-1)[..., 0]
    w_BxL = batch["weights"][:, 1:].astype(jnp.float32)
    rw_BxL = w_BxL * rtt_byte_mask(target_BxL)
    return {
        "nll": jnp.sum(nll_BxL * w_BxL),
        "weight": jnp.sum(w_BxL),
        "rtt_nll": jnp.sum(nll_BxL * rw_BxL),
        "rtt_weight": jnp.sum(rw_BxL),
    }


def weighted_xent(logits_BxLxV: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted next-token NLL, sum of weights): tokens[:, 1:] from logits[:, :-1], float32."""
    sums = xent_sums(logits_BxLxV, batch)
    return sums["nll"], sums["weight"]


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-axis "data" mesh over all (or the first `num_devices`) global devices."""
    devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
    # Auto axis: XLA's partitioner propagates the batch sharding through the model (no explicit-sharding types).
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def init_states(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int, mesh: jax.sharding.Mesh
) -> tuple[nnx.GraphDef, nnx.GraphDef, Any, Any]:
    """(model graphdef, optimizer graphdef, model state, opt state), initialised replicated on the mesh.

    Eager: each initializer runs as its own small op on the default device (the accelerator when there is
    one, so no host copy), then the states are placed on the mesh. A single jitted init was tried and
    dropped: XLA's GPU compiler took more than 2 minutes on the ~200 random fills of `base` (H100,
    jax 0.11.2), longer than the train step's own compile.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    model = Transformer(model_cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    model_def, opt_def = nnx.graphdef(model), nnx.graphdef(opt)
    # Params are replicated (pure data parallel): each device holds a full copy.
    model_state, opt_state = jax.device_put((nnx.state(model), nnx.state(opt)), replicated)
    return model_def, opt_def, model_state, opt_state


def make_train_step(
    model_def: nnx.GraphDef, opt_def: nnx.GraphDef, mesh: jax.sharding.Mesh, rtt_weight: float = 1.0
) -> Callable:
    """The jitted step ((model_state, opt_state), batch) -> ((model_state, opt_state), metrics); donates state.

    The objective is the weighted mean NLL with the RTT bytes counted `rtt_weight` times (the other tokens'
    scale unchanged); the reported "loss" is the plain mean NLL either way, so runs stay comparable.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def step(states, batch: Batch):
        model = nnx.merge(model_def, states[0])
        opt = nnx.merge(opt_def, states[1])

        def loss_fn(model: Transformer):
            logits = model(batch["tokens"], batch["segment_ids"], batch["positions"], deterministic=False)
            sums = xent_sums(logits, batch)
            objective = sums["nll"] + (rtt_weight - 1.0) * sums["rtt_nll"]
            return objective / jnp.maximum(sums["weight"], 1.0), sums

        (_, sums), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        metrics = {
            "loss": sums["nll"] / jnp.maximum(sums["weight"], 1.0),
            "rtt_loss": sums["rtt_nll"] / jnp.maximum(sums["rtt_weight"], 1.0),
            "weighted_tokens": sums["weight"],
            "grad_norm": optax.global_norm(grads),
        }
        return (nnx.state(model), nnx.state(opt)), metrics

    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_step(model_def: nnx.GraphDef, mesh: jax.sharding.Mesh) -> Callable:
    """The jitted eval step (model_state, batch) -> `xent_sums` dict, deterministic."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def step(model_state, batch: Batch):
        model = nnx.merge(model_def, model_state)
        logits = model(batch["tokens"], batch["segment_ids"], batch["positions"], deterministic=True)
        return xent_sums(logits, batch)

    return jax.jit(step, in_shardings=(replicated, data), out_shardings=replicated)


def eval_losses(eval_step: Callable, model_state, batches, mesh: jax.sharding.Mesh) -> dict[str, float]:
    """{"loss", "rtt_loss"}: weighted mean NLL (nats/token) over `batches`, all tokens and RTT bytes only."""
    tot = {"nll": 0.0, "weight": 0.0, "rtt_nll": 0.0, "rtt_weight": 0.0}
    for batch in batches:
        sums = jax.device_get(eval_step(model_state, put_batch(batch, mesh)))
        tot = {k: v + float(sums[k]) for k, v in tot.items()}
    return {
        "loss": tot["nll"] / max(tot["weight"], 1.0),
        "rtt_loss": tot["rtt_nll"] / max(tot["rtt_weight"], 1.0),
    }


def put_batch(batch: Batch, mesh: jax.sharding.Mesh) -> Batch:
    """Host batch (this process's rows) to a global array sharded on axis 0 over the "data" mesh axis."""
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    out = {}
    for key in BATCH_KEYS:
        dtype = np.float32 if key == "weights" else np.int32
        out[key] = jax.make_array_from_process_local_data(data, np.asarray(batch[key], dtype))
    return out

"""Model training: data parallel over a 1-axis mesh, exact resume from orbax checkpoints, tracked metrics.

The steps run in `loop.TrainLoop`; this module builds the state, resumes it and adds its hooks.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from pingllm_core.model import checkpoint as ckpt
from pingllm_core.model.loop import StepInfo, Throughput, TrainLoop, checkpoint_hook
from pingllm_core.model.step import (
    eval_losses,
    init_states,
    lr_schedule,
    make_eval_step,
    make_mesh,
    make_train_step,
    make_tx,
    put_batch,
)
from pingllm_core.model.tracking import Tracker
from pingllm_core.model.transformer import ModelConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, logging and checkpoint settings of one training run."""

    steps: int = 1000  # total optimizer steps of this run (the schedule ends here)
    lr: float = 3e-4  # peak learning rate after warmup
    warmup_steps: int = 100  # linear warmup from 0 (steps)
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio at the end of the cosine decay
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip gradients to this global L2 norm
    rtt_loss_weight: float = 1.0  # the RTT bytes count this many times in the objective
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.95  # Adam second-moment decay
    seed: int = 0  # parameter init and dropout seed
    log_every: int = 10  # steps between progress lines and tracked metrics
    ckpt_every: int = 500  # steps between checkpoints (the last step is always saved)
    eval_every: int = 0  # steps between eval-loss passes; 0 = only at the end
    keep_checkpoints: int = 3  # newest checkpoint steps kept on disk
    init_from: str | None = None  # checkpoint folder whose weights start this run (fresh optimizer/schedule)
    num_devices: int | None = None  # devices in the data mesh; None = all global devices
    distributed: bool = False  # call jax.distributed.initialize() (multi-host; env PINGLLM_DISTRIBUTED=1 too)

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"TrainConfig.steps must be positive, got {self.steps}")
        if self.rtt_loss_weight <= 0:
            raise ValueError(f"TrainConfig.rtt_loss_weight must be positive, got {self.rtt_loss_weight}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"TrainConfig.lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}"
            )
        for name in ("warmup_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """Plain dict for JSON and tracking."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports."""

    step: int  # last completed step
    history: list[tuple[int, float]]  # (step, training loss) for every step run in this process
    eval_loss: float | None  # weighted mean NLL on eval_batches at the end (nats/token)
    tokens_per_s: float  # real (weighted) tokens per second, after compilation
    checkpoint: Path  # folder of the saved step
    seconds: float  # wall time of this call
    n_params: int  # trainable parameters
    resumed_from: int | None = None  # step restored at start, if any
    eval_rtt_loss: float | None = None  # the same, on the RTT bytes only
    rtt_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, train RTT loss)
    eval_history: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)  # step, loss, RTT


def _maybe_init_distributed(cfg: TrainConfig) -> None:
    """Multi-host: jax.distributed.initialize() reads the coordinator from the cluster env (not testable here)."""
    if cfg.distributed or os.environ.get("PINGLLM_DISTRIBUTED") == "1":
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()


def _fmt_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _params_from(init_from: str, model_cfg: ModelConfig, model_def, model_state):
    """Model state whose Params come from another run's latest checkpoint (dropout rng etc. kept)."""
    other = ckpt.read_model_config(Path(init_from))
    shape_fields = ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "tie_embeddings")
    if any(getattr(other, f) != getattr(model_cfg, f) for f in shape_fields):
        raise ValueError(f"init_from {init_from} has a different model shape: {other} vs {model_cfg}")
    sharding = jax.tree.leaves(model_state)[0].sharding
    restored, _ = ckpt.restore_model_state(Path(init_from), ckpt.abstract_like(model_state, sharding))
    model = nnx.merge(model_def, model_state)
    nnx.update(model, nnx.state(nnx.merge(model_def, restored), nnx.Param))
    return nnx.state(model)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    make_iter: Callable[[], Iterator[dict]],
    ckpt_dir: Path,
    tracker: Tracker,
    eval_batches: Sequence[dict] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume the latest checkpoint in `ckpt_dir`) to `train_cfg.steps`; the caller finishes the tracker."""
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    _maybe_init_distributed(train_cfg)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(train_cfg.num_devices)
    schedule = lr_schedule(train_cfg.lr, train_cfg.warmup_steps, train_cfg.steps, train_cfg.min_lr_ratio)
    tx = make_tx(
        schedule,
        weight_decay=train_cfg.weight_decay,
        grad_clip=train_cfg.grad_clip,
        b1=train_cfg.b1,
        b2=train_cfg.b2,
    )
    model_def, opt_def, model_state, opt_state = init_states(model_cfg, tx, train_cfg.seed, mesh)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.merge(model_def, model_state), nnx.Param)))
    mgr = ckpt.make_manager(ckpt_dir, train_cfg.keep_checkpoints)

    it = make_iter()
    model_state, opt_state, resumed_from = ckpt.restore_latest(mgr, model_state, opt_state, it)
    start = resumed_from or 0
    if resumed_from is not None:
        say(f"resumed from step {start} in {ckpt_dir}")
    elif train_cfg.init_from:
        model_state = _params_from(train_cfg.init_from, model_cfg, model_def, model_state)
        say(f"initialised weights from {train_cfg.init_from}")
    if jax.process_index() == 0:
        ckpt.write_json(ckpt_dir / ckpt.MODEL_CONFIG_FILE, model_cfg.to_dict())
        ckpt.write_json(ckpt_dir / ckpt.TRAIN_CONFIG_FILE, train_cfg.to_dict())
    tracker.log_params(
        {f"model.{k}": v for k, v in model_cfg.to_dict().items()}
        | {f"train.{k}": v for k, v in train_cfg.to_dict().items()}
        | {"n_params": n_params, "n_devices": mesh.size}
    )
    if resumed_from is not None:
        tracker.set_tags({"resumed_from": str(resumed_from)})  # a tag: MLflow params cannot change value

    train_step = make_train_step(model_def, opt_def, mesh, train_cfg.rtt_loss_weight)
    eval_step = make_eval_step(model_def, mesh) if eval_batches else None
    loop = TrainLoop(
        lambda states: train_step(states, put_batch(next(it), mesh)),
        train_cfg.steps,
        name="training loss",
        nan_note="; stopping (no checkpoint saved)",
        read_late=True,  # metrics are read one step late so the host never stalls the device
    )
    throughput = Throughput("weighted_tokens")  # the window starts after the first (compiling) step
    eval_history: list[tuple[int, float, float]] = []

    def report(info: StepInfo) -> None:
        step, host = info.step, info.metrics
        lr = float(schedule(step - 1))  # the lr used by this step's update
        tps = throughput.per_s()
        tracker.log_metrics(
            {"loss": host["loss"], "rtt_loss": host["rtt_loss"], "lr": lr, "grad_norm": host["grad_norm"],
             "tokens_per_s": tps}, step,
        )  # fmt: skip
        eta = (train_cfg.steps - step) * (time.perf_counter() - t_start) / max(step - start, 1)
        say(f"step {step}/{train_cfg.steps} loss {host['loss']:.3f} (rtt {host['rtt_loss']:.3f}) lr {lr:.1e} "
            f"tok/s {tps / 1e3:.1f}k ETA {_fmt_eta(eta)}")  # fmt: skip

    def run_eval(step: int, model_state) -> None:
        got = eval_losses(eval_step, model_state, eval_batches, mesh)
        tracker.log_metrics({"eval_loss": got["loss"], "eval_rtt_loss": got["rtt_loss"]}, step)
        eval_history.append((step, got["loss"], got["rtt_loss"]))

    # Hook order at a step: throughput, checkpoint (after the NaN check), eval, then the report.
    loop.add_hook(throughput)
    loop.add_hook(checkpoint_hook(mgr, it), every=train_cfg.ckpt_every, last=True, state=True)
    if eval_step is not None and train_cfg.eval_every:
        loop.add_hook(lambda info: run_eval(info.step, info.state[0]), every=train_cfg.eval_every, state=True)
    loop.add_hook(report, every=train_cfg.log_every, last=True)
    model_state, _ = loop.run((model_state, opt_state), start)
    step = loop.step
    # The final eval, unless the last step just ran one (also when a finished run is re-materialized).
    if eval_step is not None and (
        not eval_history or not train_cfg.eval_every or step % train_cfg.eval_every
    ):
        run_eval(step, model_state)
    mgr.wait_until_finished()
    final_dir = ckpt_dir / str(mgr.latest_step())
    eval_loss, eval_rtt_loss = eval_history[-1][1:] if eval_history else (None, None)
    return TrainResult(
        step=step,
        history=[(s, m["loss"]) for s, m in loop.history],
        eval_loss=eval_loss,
        tokens_per_s=throughput.per_s(),
        checkpoint=final_dir,
        seconds=time.perf_counter() - t_start,
        n_params=int(n_params),
        resumed_from=resumed_from,
        eval_rtt_loss=eval_rtt_loss,
        rtt_history=[(s, m["rtt_loss"]) for s, m in loop.history],
        eval_history=eval_history,
    )


def synthetic_batches(n: int, batch: int, seq_len: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Learnable synthetic batches (a noisy repeating pattern, two packed segments per row) for tests and demos."""
    rng = np.random.default_rng(seed)
    out = []
    half = seq_len // 2
    for _ in range(n):
        period = rng.integers(2, 6, size=(batch, 1))
        offset = rng.integers(11, 200, size=(batch, 1))
        t = np.arange(seq_len)[None, :]
        tokens = (offset + (t % half) % period).astype(np.int32)
        seg = np.where(t < half, 1, 2).repeat(batch, 0).astype(np.int32)
        pos = np.where(t < half, t, t - half).repeat(batch, 0).astype(np.int32)
        weights = (pos > 0).astype(np.float32)  # the first token of a segment is not predicted
        out.append({"tokens": tokens, "segment_ids": seg, "positions": pos, "weights": weights})
    return out

"""Distilled tiers (property 6, "scaling to the node"): a small student learns from a large teacher.

A student transformer is trained on the same packed loader batches as `train.train`, with the loss of
Hinton, Vinyals and Dean ("Distilling the Knowledge in a Neural Network", 2015):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(targets)

both terms are means over the predicted tokens (tokens[:, 1:] from logits[:, :-1], weighted by
weights[:, 1:] exactly like `step.weighted_xent`). T^2 keeps the KL gradient's scale independent of T.

Intended mapping of tiers (the teacher is the best model one can afford to train centrally, the students
are what a node can run):

    base (85M)  -> small (10M) student      the released "laptop" tier
    small (10M) -> tiny-sized student       the "phone / router" tier
    tiny (test) -> a 1-layer d=32 student   what tests and the embedded demo run (`TEST_STUDENT`)

`tier_table` then puts teacher, distilled student and a same-shape student trained from scratch (CE only,
same steps and data: the control) side by side: parameters, held-out eval loss, median relative error of
the predicted median RTT, and CPU query latency, so a user can pick the tier that fits their device.

Pure library: no Dagster imports. The student is saved as an ordinary pingllm checkpoint folder
(orbax steps + model_config.json), so `checkpoint.load_checkpoint` and `QueryEngine.load` read it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from pingllm_core.model import checkpoint as ckpt
from pingllm_core.model.loop import StepInfo, TrainLoop, checkpoint_hook
from pingllm_core.model.step import (
    eval_losses,
    init_states,
    lr_schedule,
    make_eval_step,
    make_mesh,
    make_tx,
    put_batch,
    weighted_xent,
)
from pingllm_core.model.transformer import ModelConfig, Transformer, count_params, model_config

__all__ = [
    "DISTILL_CONFIG_FILE",
    "TEST_STUDENT",
    "DistillConfig",
    "DistillResult",
    "distill",
    "distill_loss",
    "heldout_loss",
    "make_distill_step",
    "student_config",
]

DISTILL_CONFIG_FILE = "distill_config.json"
# The test-scale student: a 1-layer, d=32 version of `tiny` (about a quarter of its parameters).
TEST_STUDENT = dict(d_model=32, n_layers=1, n_heads=2, d_head=16, d_mlp=128)
# Real use: the student of a `base` teacher is the `small` tier's shape.
STUDENT_OF = {"base": "small", "small": "tiny", "tiny": None}


_SHAPE = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp")


def student_config(teacher_cfg: ModelConfig, **overrides) -> ModelConfig:
    """The student shape for a teacher: the next tier down (base -> small, small -> tiny), else TEST_STUDENT.

    The student keeps the teacher's vocabulary, context length and numerics; `overrides` win.
    """
    tier = next((t for t in STUDENT_OF if all(getattr(model_config(t), f) == getattr(teacher_cfg, f)
                 for f in _SHAPE)), None)  # fmt: skip
    below = STUDENT_OF.get(tier) if tier else None
    shape = {f: getattr(model_config(below), f) for f in _SHAPE} if below else dict(TEST_STUDENT)
    return dataclasses.replace(teacher_cfg, **{**shape, **overrides})


# ------------------------------------------------------------------------------------------------ loss


def distill_loss(
    student_logits_BxLxV: jax.Array,
    teacher_logits_BxLxV: jax.Array | None,
    batch: dict,
    temperature: float,
    alpha: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, {"kl", "ce", "weighted_tokens"}) of one batch; float32 scalars.

    kl = weighted mean over predicted tokens of KL(teacher_T || student_T), with p_T = softmax(logits / T);
    ce = weighted mean NLL of the targets (temperature 1); loss = alpha * T^2 * kl + (1 - alpha) * ce.
    Without a teacher (the from-scratch control) kl is NaN and loss = ce whatever alpha is.
    """
    nll_sum, w_sum = weighted_xent(student_logits_BxLxV, batch)
    denom = jnp.maximum(w_sum, 1.0)
    ce = nll_sum / denom
    if teacher_logits_BxLxV is None:
        return ce, {"kl": jnp.float32(jnp.nan), "ce": ce, "weighted_tokens": w_sum}
    t = jnp.float32(temperature)
    logq = jax.nn.log_softmax(student_logits_BxLxV[:, :-1].astype(jnp.float32) / t)
    logp = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits_BxLxV[:, :-1]).astype(jnp.float32) / t)
    kl_BxL = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    w_BxL = batch["weights"][:, 1:].astype(jnp.float32)
    kl = jnp.sum(kl_BxL * w_BxL) / denom
    loss = alpha * t * t * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl, "ce": ce, "weighted_tokens": w_sum}


def make_distill_step(
    student_def: nnx.GraphDef,
    opt_def: nnx.GraphDef,
    teacher_def: nnx.GraphDef | None,
    mesh: jax.sharding.Mesh,
    temperature: float,
    alpha: float,
) -> Callable:
    """The jitted step ((student_state, opt_state), teacher_state, batch) -> (states, metrics); donates states.

    The teacher runs deterministically (no dropout) inside the same jit; with `teacher_def=None` the step is
    plain cross-entropy training (teacher_state is ignored; pass None).
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def step(states, teacher_state, batch):
        model = nnx.merge(student_def, states[0])
        opt = nnx.merge(opt_def, states[1])
        t_logits = None
        if teacher_def is not None:
            teacher = nnx.merge(teacher_def, teacher_state)
            t_logits = teacher(batch["tokens"], batch["segment_ids"], batch["positions"], deterministic=True)

        def loss_fn(model: Transformer):
            logits = model(batch["tokens"], batch["segment_ids"], batch["positions"], deterministic=False)
            return distill_loss(logits, t_logits, batch, temperature, alpha)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return (nnx.state(model), nnx.state(opt)), {"loss": loss, **aux}

    return jax.jit(
        step,
        in_shardings=(replicated, replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class DistillResult:
    """What a finished distillation (or from-scratch control) run reports."""

    step: int  # last completed step
    history: list[dict[str, float]]  # per step run in this process: step, loss, kl, ce
    eval_loss: float | None  # weighted mean NLL on eval_batches at the end (nats/token)
    checkpoint: Path  # the checkpoint folder (load with checkpoint.load_checkpoint)
    n_params: int  # student parameters
    seconds: float  # wall time of this call
    resumed_from: int | None = None


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Optimisation and loss settings of one distillation (or from-scratch control) run."""

    steps: int  # optimizer steps (the schedule ends here)
    lr: float  # peak learning rate after warmup
    temperature: float  # softening T of both distributions in the KL term
    alpha: float  # weight of the T^2-scaled KL term; 1 - alpha on the hard-target cross-entropy
    warmup_steps: int = 10  # linear warmup from 0 (steps)
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio at the end of the cosine decay
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip gradients to this global L2 norm
    seed: int = 0  # student init and dropout seed
    log_every: int = 10  # steps between progress lines
    teacher_dtype: str | None = "float32"  # teacher compute dtype, None: as configured (bf16 is slow on CPU)

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.lr <= 0 or self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"need steps > 0, lr > 0, temperature > 0, 0 <= alpha <= 1; got "
                             f"{self.steps}, {self.lr}, {self.temperature}, {self.alpha}")  # fmt: skip


def heldout_loss(model_def, model_state, batches: Sequence[dict], mesh) -> float:
    return eval_losses(make_eval_step(model_def, mesh), model_state, batches, mesh)["loss"]


def _teacher_for_compute(teacher: Transformer, teacher_cfg: ModelConfig, dtype: str | None):
    """(graphdef, state) of the teacher with dropout off and compute in `dtype` (None: as configured)."""
    cfg = dataclasses.replace(teacher_cfg, dropout=0.0, dtype=dtype or teacher_cfg.dtype)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    return graphdef, nnx.state(teacher)  # numerics live in the graphdef, weights in the state


def distill(
    teacher: Transformer | None,
    teacher_cfg: ModelConfig | None,
    student_cfg: ModelConfig,
    make_iter: Callable[[], Iterator[dict]],
    ckpt_dir: str | Path,
    cfg: DistillConfig,
    *,
    eval_batches: Sequence[dict] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DistillResult:
    """Train `student_cfg` on `make_iter()` batches against `teacher` and save it under `ckpt_dir`.

    `teacher=None` (or alpha=0 with no teacher) trains the same student from scratch on cross-entropy: the
    control. The optimizer and schedule are the training loop's (`step.make_tx`, warmup + cosine), the
    steps run in `loop.TrainLoop`; the checkpoint is written with `checkpoint.save_step` (model, optimizer,
    data iterator, meta) at the last step, so a rerun with the same `steps` resumes/returns immediately and
    `load_checkpoint(ckpt_dir)` loads it. The teacher computes in `cfg.teacher_dtype`.
    """
    if teacher is not None:
        teacher_cfg = teacher_cfg or teacher.cfg
        if teacher_cfg.vocab_size != student_cfg.vocab_size:
            raise ValueError(
                f"teacher vocab {teacher_cfg.vocab_size} != student vocab {student_cfg.vocab_size}"
            )
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    schedule = lr_schedule(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    tx = make_tx(schedule, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, b1=0.9, b2=0.95)
    model_def, opt_def, model_state, opt_state = init_states(student_cfg, tx, cfg.seed, mesh)
    n_params = count_params(nnx.merge(model_def, model_state))
    teacher_def = teacher_state = None
    if teacher is not None:
        teacher_def, teacher_state = _teacher_for_compute(teacher, teacher_cfg, cfg.teacher_dtype)
        teacher_state = jax.device_put(teacher_state, replicated)

    mgr = ckpt.make_manager(ckpt_dir, keep=1)
    it = make_iter()
    model_state, opt_state, resumed_from = ckpt.restore_latest(mgr, model_state, opt_state, it)
    start = resumed_from or 0
    if resumed_from is not None:
        say(f"distill: resumed from step {start} in {ckpt_dir}")
    ckpt.write_json(ckpt_dir / ckpt.MODEL_CONFIG_FILE, student_cfg.to_dict())
    ckpt.write_json(
        ckpt_dir / DISTILL_CONFIG_FILE,
        {"steps": cfg.steps, "lr": cfg.lr, "temperature": cfg.temperature,
         "alpha": cfg.alpha if teacher is not None else 0.0, "seed": cfg.seed, "warmup_steps": cfg.warmup_steps,
         "teacher": None if teacher is None else teacher_cfg.to_dict(), "n_params": int(n_params)},
    )  # fmt: skip

    step_fn = make_distill_step(model_def, opt_def, teacher_def, mesh, cfg.temperature, cfg.alpha)
    what = "distill" if teacher is not None else "scratch"
    loop = TrainLoop(
        lambda states: step_fn(states, teacher_state, put_batch(next(it), mesh)),
        cfg.steps,
        name=f"{what} loss",
        nan_note="; stopping",
    )

    def report(info: StepInfo) -> None:
        m = info.metrics
        say(f"{what} step {info.step}/{cfg.steps} loss {m['loss']:.3f} kl {m['kl']:.3f} ce {m['ce']:.3f}")

    loop.add_hook(report, every=cfg.log_every, last=True)
    loop.add_hook(checkpoint_hook(mgr, it), every=0, last=True, state=True)  # the last step only
    model_state, _ = loop.run((model_state, opt_state), start)
    mgr.wait_until_finished()
    close = getattr(it, "close", None)
    if close is not None:
        close()
    eval_loss = heldout_loss(model_def, model_state, eval_batches, mesh) if eval_batches else None
    return DistillResult(
        step=loop.step,
        history=[{"step": s, "loss": m["loss"], "kl": m["kl"], "ce": m["ce"]} for s, m in loop.history],
        eval_loss=eval_loss,
        checkpoint=ckpt_dir,
        n_params=int(n_params),
        seconds=time.perf_counter() - t_start,
        resumed_from=resumed_from,
    )

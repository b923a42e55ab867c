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
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from pingllm_core.evaluation import figures as F
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.evaluate import context_before
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
    "TierTable",
    "TiersConfig",
    "TiersRun",
    "build_tiers",
    "distill",
    "distill_loss",
    "fig_tiers",
    "make_distill_step",
    "student_config",
    "tier_table",
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


def _eval_loss(model_def, model_state, batches: Sequence[dict], mesh) -> float:
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
    eval_loss = _eval_loss(model_def, model_state, eval_batches, mesh) if eval_batches else None
    return DistillResult(
        step=loop.step,
        history=[{"step": s, "loss": m["loss"], "kl": m["kl"], "ce": m["ce"]} for s, m in loop.history],
        eval_loss=eval_loss,
        checkpoint=ckpt_dir,
        n_params=int(n_params),
        seconds=time.perf_counter() - t_start,
        resumed_from=resumed_from,
    )


# ---------------------------------------------------------------------------------------- tier table


@dataclasses.dataclass
class TierTable:
    """Rows of the tier comparison, the same as Markdown, and the figure."""

    rows: list[dict]
    markdown: str
    figure: Path | None


def _p50_ms_interleaved(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """p50 wall time (ms) of each fn over `repeats` rounds, after a warm-up call each.

    Round-robin: every round times each fn once, so load from other processes hits all of them alike.
    """
    for fn in fns:
        fn()  # warm-up: compiles every shape this query needs
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(statistics.median(t)) for t in times]


def _eval_nll(model: Transformer, batches: Sequence[dict]) -> float:
    if not batches:
        return float("nan")
    mesh = make_mesh(1)
    model_def, state = nnx.split(model)
    return _eval_loss(model_def, jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
                      batches, mesh)  # fmt: skip


def tier_table(
    models: Sequence[tuple[str, Transformer, ModelConfig]],
    heldout: pd.DataFrame,
    eval_batches: Sequence[dict],
    *,
    n_rows: int = 50,
    context_k: int = 5,
    repeats: int = 20,
    rank_candidates: int = 200,
    rank_repeats: int = 5,
    seed: int = 0,
    fig_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TierTable:
    """Compare models (name, model, cfg) on the same held-out data; one row per model.

    Columns: params; eval_loss (weighted NLL on `eval_batches`, nats/token); median_rel_err of the predicted
    median RTT on `n_rows` fixed successful rows of `heldout` (a split DataFrame with src_addr, dst_addr,
    rtt, time; each query timed, with up to `context_k` earlier measurements of the same source); p50
    latency of `predict` (ms, `repeats` runs after a warm-up, CPU/default device, one fixed query) and of
    `rank` over `rank_candidates` destinations (0 skips it). Numbers are comparable only within one call.
    """
    from pingllm_core.query.engine import QueryEngine

    say = progress or (lambda _msg: None)
    df = heldout.sort_values(["src_addr", "time"], kind="stable").reset_index(drop=True)
    ok = np.flatnonzero(df.rtt.to_numpy() > 0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(ok, size=min(n_rows, len(ok)), replace=False)) if len(ok) else np.zeros(0, int)
    if not len(rows):
        raise ValueError("no successful held-out rows to score")
    ctxs = [context_before(df, int(r), context_k) for r in rows]
    true = df.rtt.to_numpy()[rows].astype(np.float64)
    r0 = int(rows[0])
    src0, dst0, t0, ctx0 = df.src_addr.iat[r0], df.dst_addr.iat[r0], int(df.time.iat[r0]), ctxs[0]
    cands = list(dict.fromkeys(df.dst_addr.tolist()))[:rank_candidates]
    k = 0
    while len(cands) < rank_candidates:  # pad with deterministic public IPv4 addresses
        k += 1
        cands.append(f"{11 + k % 200}.{(k * 7) % 256}.{(k * 13) % 256}.{1 + k % 250}")
        cands = list(dict.fromkeys(cands))
    out, engines = [], []
    for name, model, cfg in models:
        engine = QueryEngine(model, cfg)
        engines.append(engine)
        preds = [engine.predict(df.src_addr.iat[r], df.dst_addr.iat[r], time=int(df.time.iat[r]), context=c).median
                 for r, c in zip(rows, ctxs, strict=True)]  # fmt: skip
        rel = M.relative_errors(np.asarray(preds), true)
        out.append({
            "model": name,
            "params": count_params(model),
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "eval_loss": _eval_nll(model, eval_batches),
            "median_rel_err": float(np.median(rel)) if len(rel) else float("nan"),
            "rows": len(rel),
        })  # fmt: skip
        say(
            f"tiers: {name}: eval_loss {out[-1]['eval_loss']:.4g}, median_rel_err {out[-1]['median_rel_err']:.4g}"
        )
    lat = _p50_ms_interleaved(
        [lambda e=e: e.predict(src0, dst0, time=t0, context=ctx0) for e in engines], repeats
    )
    for row, ms in zip(out, lat, strict=True):
        row["predict_p50_ms"] = ms
    if rank_candidates > 0:
        kw = {"time": t0, "context": ctx0, "allow_mixed_family": True}  # latency only: every candidate ranked
        lat = _p50_ms_interleaved([lambda e=e: e.rank(src0, cands, **kw) for e in engines],
                                  rank_repeats)  # fmt: skip
        for row, ms in zip(out, lat, strict=True):
            row["rank_p50_ms"] = ms
    say("tiers: p50 latency ms " + ", ".join(f"{r['model']} {r['predict_p50_ms']:.2f}" for r in out))
    fig = fig_tiers(out, fig_path) if fig_path is not None else None
    return TierTable(rows=out, markdown=F.markdown_table(out), figure=fig)


def fig_tiers(rows: Sequence[dict], path: str | Path) -> Path:
    """Accuracy vs parameters (eval loss and median relative error), each point annotated with its latency."""
    fig, axes = F.plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("eval_loss", "held-out eval loss (nats/token)"),
        ("median_rel_err", "median relative error, median RTT"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, r in enumerate(rows):
            ax.scatter([r["params"]], [r[key]], s=50, color=f"C{i}", label=r["model"], zorder=3)
            note = f"{r['predict_p50_ms']:.1f} ms/predict"
            if "rank_p50_ms" in r:
                note += f"\n{r['rank_p50_ms']:.0f} ms/rank"
            left = i % 2 == 1  # same-size students (distilled, scratch) get labels on opposite sides
            ax.annotate(note, (r["params"], r[key]), textcoords="offset points", xytext=(-8 if left else 8, 0),
                        ha="right" if left else "left", va="center", fontsize=7, color=f"C{i}")  # fmt: skip
        lo, hi = min(r["params"] for r in rows), max(r["params"] for r in rows)
        ax.set_xlim(lo / 3, hi * 3)
        ax.margins(y=0.3)
        F._log_x(ax)
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("tiers: accuracy vs size (p50 CPU query latency annotated)", fontsize=10)
    return F._save(fig, path)


# ------------------------------------------------------------------------------------------ end to end


@dataclasses.dataclass
class TiersRun:
    """The whole prototype: both students' training runs and the comparison."""

    table: TierTable
    distilled: DistillResult
    scratch: DistillResult
    teacher_step: int


@dataclasses.dataclass(frozen=True)
class TiersConfig:
    """The tier prototype: student shape, both students' training budget and the comparison's sizes."""

    student: dict | None = None  # shape fields over `student_config`'s (e.g. TEST_STUDENT)
    steps: int = 80  # optimizer steps of each student (distilled and from-scratch control)
    lr: float = 3e-3  # peak learning rate (warmup steps // 10, cosine to 10%)
    temperature: float = 2.0  # softening of both distributions in the KL term
    alpha: float = 0.5  # weight of the KL term; 1 - alpha on the hard-target cross-entropy
    batch_size: int = 8  # packed rows per training batch
    seq_len: int | None = None  # tokens per packed row; None = the teacher's max_len
    eval_batches: int = 2  # held-out batches for the eval loss
    n_rows: int = 50  # held-out rows for the median relative error
    repeats: int = 20  # timed predict calls (after warm-up) per model
    rank_candidates: int = 200  # destinations ranked in the rank-latency column; 0 skips it
    seed: int = 0  # loader and student init seed (the same for both students)

    def distill_config(self) -> DistillConfig:
        """What each student trains with."""
        return DistillConfig(steps=self.steps, lr=self.lr, temperature=self.temperature, alpha=self.alpha,
                             seed=self.seed, warmup_steps=max(1, self.steps // 10),
                             log_every=max(1, self.steps // 5))  # fmt: skip


def build_tiers(
    teacher_dir: str | Path,
    train_records: str | Path,
    heldout_records: str | Path,
    heldout: pd.DataFrame,
    out_dir: str | Path,
    cfg: TiersConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TiersRun:
    """Distil the checkpoint in `teacher_dir` into a student, train the same student from scratch, compare.

    Writes `out_dir/{distilled,scratch}/` (checkpoint folders, rebuilt each call), `tiers.png`, `tiers.md`
    and `tiers.json`. `cfg.student` overrides the shape from `student_config` (e.g. TEST_STUDENT's fields).
    Both students see the same batches in the same order (same loader seed) and the same init seed.
    """
    import json
    import shutil

    from pingllm_core.data.loader import LoaderConfig, iter_eval_batches, make_train_iter
    from pingllm_core.model.recipe import RECIPE_AUGMENTATION

    cfg = cfg or TiersConfig()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    teacher, tcfg, t_step = ckpt.load_checkpoint(Path(teacher_dir))
    scfg = student_config(tcfg, **(cfg.student or {}))
    loader = LoaderConfig(
        seq_len=cfg.seq_len or tcfg.max_len, batch_size=cfg.batch_size, seed=cfg.seed, **RECIPE_AUGMENTATION
    )
    ev = list(iter_eval_batches(heldout_records, loader.scoring(), cfg.eval_batches))
    dcfg = cfg.distill_config()
    results = {}
    for name, t in (("distilled", teacher), ("scratch", None)):
        d = out_dir / name
        if d.exists():
            shutil.rmtree(d)
        say(f"tiers: training the {name} student ({scfg.d_model}x{scfg.n_layers}) for {cfg.steps} steps")
        results[name] = distill(
            t, tcfg if t is not None else None, scfg, lambda: make_train_iter(train_records, loader), d, dcfg,
            eval_batches=ev, progress=say,
        )  # fmt: skip
    models = [("teacher", teacher, tcfg)]
    for name in ("distilled", "scratch"):
        m, c, _ = ckpt.load_checkpoint(out_dir / name)
        models.append((name, m, c))
    table = tier_table(models, heldout, ev, n_rows=cfg.n_rows, repeats=cfg.repeats,
                       rank_candidates=cfg.rank_candidates, seed=cfg.seed, fig_path=out_dir / "tiers.png",
                       progress=say)  # fmt: skip
    (out_dir / "tiers.md").write_text(table.markdown)
    (out_dir / "tiers.json").write_text(json.dumps(table.rows, indent=2))
    return TiersRun(
        table=table, distilled=results["distilled"], scratch=results["scratch"], teacher_step=t_step
    )

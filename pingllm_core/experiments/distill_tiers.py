"""The tier comparison of distillation (see `distill`): teacher, distilled student and a same-shape student
trained from scratch, side by side: parameters, held-out eval loss, median relative error, CPU query latency."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from flax import nnx

from pingllm_core.data.loader import iter_eval_batches, make_train_iter
from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.evaluation import figures as F
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.evaluate import context_before
from pingllm_core.experiments.distill import (
    DistillConfig,
    DistillResult,
    distill,
    heldout_loss,
    student_config,
)
from pingllm_core.model import checkpoint as ckpt
from pingllm_core.model.recipe import RECIPE_AUGMENTATION
from pingllm_core.model.step import make_mesh
from pingllm_core.model.transformer import ModelConfig, Transformer, count_params

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
    return heldout_loss(model_def, jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
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
    fig = F.fig_tiers(out, fig_path) if fig_path is not None else None
    return TierTable(rows=out, markdown=F.markdown_table(out), figure=fig)


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

"""Controlled ablations of the training recipe: one change at a time against a reference, same data, same rows.

Each variant trains from scratch on the train split's probe records, then reports what decides whether the
model is any use: its held-out RTT loss next to the pair-blind marginal bar, and the median relative error
of its point prediction on held-out probes and on the future window, cold and with 10 context measurements,
on the same rows as the baselines (whose numbers are printed beside it). Wall time is per variant.

    python -m pingllm_core.experiments.ablation --data-root var --out docs/ablations/2026-12-06 --variants reference,rtt_w4

writes `results.json`, `table.md` and `ablation.png` into `--out`. Variants already in `--out/results.json`
are kept (a run of a few variants adds to the table rather than replacing it); `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pingllm_core.data.loader import iter_eval_batches, make_train_iter
from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.baselines import fit_all_baselines
from pingllm_core.evaluation.evaluate import load_split, model_rows
from pingllm_core.evaluation.token_losses import rtt_marginal_loss
from pingllm_core.model.recipe import Recipe
from pingllm_core.model.tracking import ListTracker
from pingllm_core.model.train import TrainConfig, train
from pingllm_core.model.transformer import ModelConfig
from pingllm_core.paths import DataLayout

CONTEXT_K = 10  # context measurements of the "with context" column


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training recipe: a tier plus overrides of the model, loader and train configs (over `Recipe`'s)."""

    name: str
    tier: str = "tiny"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    loader: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""

    def configs(self, base: Variant | None = None) -> tuple[ModelConfig, LoaderConfig, TrainConfig]:
        """(model, loader, train) configs: the recipe's, then `base`'s overrides, then this variant's; progress
        lines every 50 steps and no checkpoint before the last step."""
        parts = [base, self] if base is not None else [self]
        m, lo, tr = {}, {}, {"log_every": 50, "ckpt_every": 10**9}
        for p in parts:
            m.update(p.model)
            lo.update(p.loader)
            tr.update(p.train)
        return Recipe(self.tier, model=m, loader=lo, train=tr).configs()


def _rows(df, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of successful pings (reproducible), sorted."""
    ok = np.flatnonzero(df.rtt.to_numpy() > 0)
    return np.sort(rng.choice(ok, size=min(n, len(ok)), replace=False)) if len(ok) else ok


def eval_rows(splits_dir: Path, rows_per_split: int, seed: int = 0) -> dict[str, Any]:
    """The rows every variant is scored on, with the baselines' median relative error on them."""
    rng = np.random.default_rng(seed)
    train_df = load_split(splits_dir / "train.parquet")
    baselines = fit_all_baselines(train_df, seed=seed)
    out: dict[str, Any] = {}
    for name in ("heldout_probes", "future"):
        df = load_split(splits_dir / f"{name}.parquet").sort_values(["src_addr", "time"], kind="stable")
        df = df.reset_index(drop=True)
        rows = _rows(df, rows_per_split, rng)
        src, dst, t = (df[c].to_numpy()[rows] for c in ("src_addr", "dst_addr", "time"))
        true = df.rtt.to_numpy()[rows]
        base = {n: M.point_metrics(b.predict(src, dst, t), true)["rel_p50"]
                for n, b in baselines.items() if b.predicts_rtt}  # fmt: skip
        out[name] = {"df": df, "rows": rows, "baselines": base}
    return out


def score_engine(engine, rows: dict[str, Any]) -> dict[str, float]:
    """Median relative error of the engine's median, cold and with CONTEXT_K context measurements."""
    out = {}
    for name, r in rows.items():
        df, true = r["df"], r["df"].rtt.to_numpy()[r["rows"]]
        for k in (0, CONTEXT_K):
            pred = model_rows(engine, df, r["rows"], k)["median"].to_numpy()
            out[f"{name}/k{k}"] = M.point_metrics(pred, true)["rel_p50"]
    return out


def run_variant(variant: Variant, data_root: Path, rows: dict[str, Any], base: Variant | None = None,
                eval_batches: int = 8, score: bool = True, keep: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Train one variant from scratch (in a temporary folder) and score it."""
    from pingllm_core.query.engine import QueryEngine

    model_cfg, loader_cfg, train_cfg = variant.configs(base)
    records = DataLayout(data_root).records
    # Scored as queries ask: fields in query order, real sources (the same batches for every recipe).
    eval_cfg = loader_cfg.scoring()
    held = list(iter_eval_batches(records / "heldout_probes", eval_cfg, eval_batches))
    fit = iter_eval_batches(records / "train", eval_cfg, 4 * eval_batches)
    marginal = rtt_marginal_loss(held, fit)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = keep or tmp
        tracker = ListTracker()
        result = train(model_cfg, train_cfg, lambda: make_train_iter(records / "train", loader_cfg),
                       Path(tmp), tracker, eval_batches=held, progress=print)  # fmt: skip
        train_s = time.perf_counter() - t0
        engine = QueryEngine.load(Path(tmp))
    scores = score_engine(engine, rows) if score else {}
    return {
        "variant": variant.name,
        "note": variant.note,
        "params": result.n_params,
        "steps": result.step,
        "eval_rtt_loss": result.eval_rtt_loss,
        "marginal_rtt_loss": marginal,
        "eval_loss": result.eval_loss,
        "tokens_per_s": result.tokens_per_s,
        "train_s": round(train_s, 1),
        "eval_rtt_curve": [(st, round(v, 3)) for st, v in tracker.series("eval_rtt_loss")],
        **scores,
    }


# The recipe every variant changes one thing of: the `trained_model` defaults at a shorter step budget.
REFERENCE = Variant(
    "reference",
    model={},
    loader={"seq_len": 256, "batch_size": 8, "field_shuffle_share": 0.5, "src_remap_share": 0.3,
            "short_context_share": 0.3},
    train={"steps": 1200, "lr": 3e-3, "warmup_steps": 50, "rtt_loss_weight": 4.0, "eval_every": 300},
    note="trained_model's recipe (tiny, grammar roles, no dropout) at half its steps",
)  # fmt: skip

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    REFERENCE,
    Variant("seed_recipe", model={"role_embedding": False, "dropout": 0.1},
            loader={"seq_len": 512, "field_shuffle_share": 1.0, "src_remap_share": 0.0, "short_context_share": 0.0},
            train={"rtt_loss_weight": 1.0, "steps": 600},
            note="the recipe before the ablations, at the same token count (its rows are twice as long)"),
    Variant("no_roles", model={"role_embedding": False}, note="no grammar-role embedding"),
    Variant("rtt_weight_1", train={"rtt_loss_weight": 1.0}, note="RTT bytes weighted like every token"),
    Variant("rtt_weight_10", train={"rtt_loss_weight": 10.0}),
    Variant("shuffle_all", loader={"field_shuffle_share": 1.0}, note="every measurement in a random field order"),
    Variant("shuffle_none", loader={"field_shuffle_share": 0.0}, note="query order only (no other prediction modes)"),
    Variant("shuffle_0.1", loader={"field_shuffle_share": 0.1}, note="1 measurement in 10 in a random field order"),
    Variant("no_src_remap", loader={"src_remap_share": 0.0}, note="real sources only"),
    Variant("no_short_contexts", loader={"short_context_share": 0.0}, note="full-length contexts only"),
    Variant("time_full_only", loader={"mode_probs": (1.0, 0.0, 0.0)}, note="every measurement timestamped"),
    Variant("time_none_only", loader={"mode_probs": (0.0, 1.0, 0.0)}, note="no timestamps"),
    Variant("context_512", loader={"seq_len": 512, "batch_size": 4}, note="512-token contexts, same tokens per step"),
    Variant("width_128", model={"d_model": 128, "d_mlp": 512}, note="twice the width"),
    Variant("depth_4", model={"n_layers": 4}, note="twice the depth"),
    Variant("lr_1e-3", train={"lr": 1e-3}),
    Variant("lr_1e-2", train={"lr": 1e-2}),
    Variant("dropout_0.1", model={"dropout": 0.1}),
    Variant("float32", model={"dtype": "float32"}, note="float32 compute instead of bfloat16"),
    Variant("steps_x2", train={"steps": 2400}, note="the trained_model step count"),
    Variant("trained_model", loader={"field_shuffle_share": 0.2}, train={"steps": 2400, "eval_every": 600},
            note="the trained_model defaults: 2400 steps, 1 measurement in 5 in a random field order"),
    Variant("trained_model_last_field", loader={"field_shuffle_share": 0.2, "field_orders": "last_field"},
            train={"steps": 2400, "eval_every": 600},
            note="trained_model, a shuffled measurement puts one field last (3 orders, not 24)"),
    Variant("trained_model_last_field_no_remap",
            loader={"field_shuffle_share": 0.2, "field_orders": "last_field", "src_remap_share": 0.0},
            train={"steps": 2400, "eval_every": 600},
            note="trained_model_last_field with real sources only"),
    Variant("trained_model_last_field_remap_0.1",
            loader={"field_shuffle_share": 0.2, "field_orders": "last_field", "src_remap_share": 0.1},
            train={"steps": 2400, "eval_every": 600},
            note="trained_model_last_field with unseen sources in 1 context in 10"),
    Variant("trained_model_no_remap", loader={"field_shuffle_share": 0.2, "src_remap_share": 0.0},
            train={"steps": 2400, "eval_every": 600}, note="trained_model with real sources only"),
    Variant("trained_model_no_recall", model={"pair_recall": False}, loader={"field_shuffle_share": 0.2},
            train={"steps": 2400, "eval_every": 600},
            note="trained_model without the pair recall (the model must find a pair's history itself)"),
    *[Variant(f"trained_model_recall_dropout_{p}", model={"recall_dropout": p}, loader={"field_shuffle_share": 0.2},
              train={"steps": 2400, "eval_every": 600},
              note=f"trained_model, the pair recall hidden at {p:.0%} of training RTTs")
      for p in (0.0, 0.6)],
]}  # fmt: skip
# The noise of one run: the recipe and its closest rival again with other seeds (model init and data order).
for _name in (
    "trained_model",
    "trained_model_last_field_remap_0.1",
    "trained_model_recall_dropout_0.6",
    "trained_model_no_recall",
):
    for _seed in (1, 2):
        _v = VARIANTS[_name]
        VARIANTS[f"{_name}_seed{_seed}"] = dataclasses.replace(
            _v,
            name=f"{_name}_seed{_seed}",
            loader=_v.loader | {"seed": _seed},
            train=_v.train | {"seed": _seed},
            note=f"{_name}, seed {_seed}",
        )


def _markdown(results: list[dict], baselines: dict) -> str:
    """The ablation table (one row per variant) and the baselines' numbers on the same rows."""
    cols = ["variant", "eval_rtt_loss", "marginal_rtt_loss", "below_marginal", "heldout_probes/k0",
            "heldout_probes/k10", "future/k0", "future/k10", "train_s", "steps", "params", "note"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        r = dict(r, below_marginal=r["marginal_rtt_loss"] - r["eval_rtt_loss"])
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")  # fmt: skip
    lines += ["", "Baselines on the same rows (median relative error, no context):", "",
              "| split | " + " | ".join(next(iter(baselines.values()))) + " |",
              "|" + "---|" * (1 + len(next(iter(baselines.values()))))]  # fmt: skip
    for split, b in baselines.items():
        lines.append(f"| {split} | " + " | ".join(f"{v:.3f}" for v in b.values()) + " |")
    return "\n".join(lines) + "\n"


def _figure(results: list[dict], path: Path) -> Path:
    """Held-out RTT loss below the marginal, and cold / context error on held-out probes, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.5), sharey=True)
    axes[0].barh(y, [r["marginal_rtt_loss"] - r["eval_rtt_loss"] for r in results], color="tab:blue")
    axes[0].axvline(0.5, color="k", ls="--", lw=1)
    axes[0].set_xlabel("held-out RTT loss below the marginal (nats; more is better)")
    for k, off, c in ((0, -0.2, "tab:orange"), (CONTEXT_K, 0.2, "tab:green")):
        axes[1].barh(y + off, [r[f"heldout_probes/k{k}"] for r in results], height=0.4, color=c,
                     label=f"held-out probes, {k} context")  # fmt: skip
    axes[1].set_xlabel("median relative error (less is better)")
    axes[1].legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _with_steps(v: Variant, steps: int) -> Variant:
    return dataclasses.replace(v, train=v.train | {"steps": steps, "eval_every": steps})


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the named variants (all by default) and write results.json, table.md and ablation.png."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-root", type=Path, default=Path("var"), help="a materialized data root (records, splits)"
    )
    p.add_argument("--out", type=Path, default=Path("docs/ablations") / dt.date.today().isoformat())
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated names: " + ", ".join(VARIANTS)
    )
    p.add_argument("--rows", type=int, default=100, help="scored rows per split")
    p.add_argument("--fresh", action="store_true", help="drop the results already in --out")
    p.add_argument("--steps", type=int, default=0, help="override every variant's steps (a quick smoke run)")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = eval_rows(DataLayout(args.data_root).splits, args.rows)
    baselines = {name: r["baselines"] for name, r in rows.items()}
    done: dict[str, dict] = {}
    if (args.out / "results.json").exists() and not args.fresh:
        done = {r["variant"]: r for r in json.loads((args.out / "results.json").read_text())["results"]}
    for name in names:
        variant, base = VARIANTS[name], (None if name == REFERENCE.name else REFERENCE)
        if args.steps:
            variant, base = (_with_steps(v, args.steps) if v is not None else None for v in (variant, base))
        done[name] = run_variant(variant, args.data_root, rows, base)
        print(json.dumps(done[name]), flush=True)
        results = [done[n] for n in VARIANTS if n in done]
        (args.out / "results.json").write_text(
            json.dumps({"baselines": baselines, "results": results}, indent=1)
        )
    results = [done[n] for n in VARIANTS if n in done]
    (args.out / "table.md").write_text(_markdown(results, baselines))
    _figure(results, args.out / "ablation.png")
    return results


if __name__ == "__main__":
    main()

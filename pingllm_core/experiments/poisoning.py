"""Poisoning detection prototype (property 4 of the study: "detect and resist malicious behaviour").

Threats T1-T4 of docs/decentralized.md are injected into a `train` split (poisoning_inject.py) and then
looked for without any ground truth by per-probe detectors: nll, consistency with other probes, and their
rank average (poisoning_detect.py). This module runs the experiment: inject, detect, clean, and the cost of
poisoning: a tiny model and the PrefixPairMedian baseline fitted on the poisoned split and on a cleaned one
(the top-scored probes dropped) are compared on the same held-out rows. Pure library: no Dagster imports.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pingllm_core.data import records
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.baselines import PrefixPairMedian, address_prefix
from pingllm_core.evaluation.figures import fig_poisoning
from pingllm_core.evaluation.report import jsonable
from pingllm_core.experiments.poisoning_detect import (
    DETECTORS,
    ConsistencyConfig,
    consistency_scores,
    detection_table,
    nll_scores,
    rank_average,
)
from pingllm_core.experiments.poisoning_inject import (
    HONEST,
    PoisonConfig,
    PoisonTruth,
    inject_poison,
)
from pingllm_core.paths import DataLayout

# ------------------------------------------------------------------------------------------ experiment


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of one poisoning experiment (defaults: about a minute on 2 CPU cores at demo size)."""

    poison: PoisonConfig = PoisonConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    drop_share: float = 0.15  # cleaning: drop this share of probes, top of the combined score
    train_steps: int = 100  # steps of each of the two comparison models (0 = skip the models)
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    nll_contexts: int = 2  # contexts per probe for the nll detector
    eval_batches: int = 4  # held-out batches for the eval loss of both models
    model_rows: int = 30  # held-out rows each model predicts (QueryEngine.predict, no context)
    seed: int = 0


@dataclasses.dataclass
class ExperimentResult:
    metrics: dict
    figure: Path
    scores: pd.DataFrame  # per probe: label, every detector's score and the consistency parts
    seconds: float


def _write_split(df: pd.DataFrame, path: Path) -> Path:
    from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [f.name for f in MEASUREMENT_SCHEMA if f.name in df.columns]
    schema = pa.schema([MEASUREMENT_SCHEMA.field(c) for c in cols])
    table = pa.Table.from_pandas(df[cols], schema=schema, preserve_index=False)
    pq.write_table(table, path)
    return path


def _train_tiny(records_dir: Path, heldout_dir: Path, ckpt_dir: Path, cfg: ExperimentConfig, say):
    from pingllm_core.data.loader import iter_eval_batches, make_train_iter
    from pingllm_core.data.loader_config import LoaderConfig
    from pingllm_core.model.recipe import RECIPE_AUGMENTATION, RECIPE_RTT_LOSS_WEIGHT
    from pingllm_core.model.tracking import NullTracker
    from pingllm_core.model.train import TrainConfig, train
    from pingllm_core.model.transformer import model_config

    shutil.rmtree(ckpt_dir, ignore_errors=True)
    loader_cfg = LoaderConfig(
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, **RECIPE_AUGMENTATION
    )
    tcfg = TrainConfig(steps=cfg.train_steps, lr=cfg.lr, warmup_steps=max(1, cfg.train_steps // 10),
                       seed=cfg.seed, rtt_loss_weight=RECIPE_RTT_LOSS_WEIGHT, log_every=max(1, cfg.train_steps // 4), ckpt_every=cfg.train_steps,
                       keep_checkpoints=1)  # fmt: skip
    evals = list(iter_eval_batches(heldout_dir, loader_cfg.scoring(), cfg.eval_batches))
    return train(model_config("tiny", max_len=cfg.seq_len), tcfg, lambda: make_train_iter(records_dir, loader_cfg),
                 ckpt_dir, NullTracker(), eval_batches=evals, progress=say)  # fmt: skip


def _median_rel_error(pred: np.ndarray, true: np.ndarray) -> float:
    return float(M.point_metrics(pred, true)["rel_p50"])


def run_experiment(
    splits_dir: str | Path,
    out_dir: str | Path,
    cfg: ExperimentConfig = ExperimentConfig(),  # noqa: B008 - frozen
    world=None,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Poison `<splits_dir>/train.parquet`, detect, clean, and compare models fitted on each; write under out_dir.

    Evaluation rows (successful ones, never poisoned): `heldout_probes`, and `future` rows of honest probes;
    "future_targeted" are those of them whose source prefix is a liar's or whose destination is the Sybil
    target (the pairs the lies are about). `world` (a SyntheticInternet) is
    optional and only used for a diagnostic: the share of deflated RTTs below the speed-of-light floor.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = pd.read_parquet(splits_dir / "train.parquet")
    heldout = pd.read_parquet(splits_dir / "heldout_probes.parquet")
    future = pd.read_parquet(splits_dir / "future.parquet")
    poisoned, truth = inject_poison(clean, cfg.poison, cfg.seed)
    say(f"poisoning: {truth.counts()}, {int((truth.row_kind != '').sum())} rows rewritten or added")
    metrics: dict = {"probes": truth.counts(), "rows_poisoned": int((truth.row_kind != "").sum()),
                     "rows": len(poisoned)}  # fmt: skip
    if world is not None:
        metrics["deflate_below_light_floor"] = _below_floor_share(poisoned, truth, world)

    # ---- detectors
    cons = consistency_scores(poisoned, cfg.consistency)
    scores = {"consistency": cons["score"]}
    run = DataLayout(out_dir)  # the experiment's own splits/, records/ and checkpoints/
    paths = {"poisoned": _write_split(poisoned, run.splits / "poisoned_train.parquet"),
             "heldout": _write_split(heldout, run.splits / "heldout_probes.parquet")}  # fmt: skip
    rec_cfg = records.RecordsConfig(shards=1)
    rec = {k: run.records / k for k in paths}
    for k, p in paths.items():
        records.write_probe_records(p, rec[k], rec_cfg)
    results = {}
    if cfg.train_steps > 0:
        from pingllm_core.model.checkpoint import load_checkpoint

        say("poisoning: training on the poisoned split")
        results["poisoned"] = _train_tiny(
            rec["poisoned"], rec["heldout"], run.checkpoints / "poisoned", cfg, say
        )
        model, _, _ = load_checkpoint(run.checkpoints / "poisoned")
        nll = nll_scores(model, rec["poisoned"], cfg.nll_contexts, cfg.seq_len, cfg.seed, say)
        scores["nll"] = nll["nll"].reindex(cons.index)
        scores["combined"] = rank_average({"nll": scores["nll"], "consistency": scores["consistency"]})
    else:
        nll = pd.DataFrame(index=cons.index)
        scores["combined"] = rank_average({"consistency": scores["consistency"]})
    scores = {k: scores[k] for k in DETECTORS if k in scores}
    metrics["detection"] = detection_table(scores, truth)

    # ---- cleaning
    comb = scores["combined"].sort_values(ascending=False)
    n_drop = int(round(cfg.drop_share * len(comb)))
    dropped = comb.index[:n_drop].to_numpy()
    lab_drop = truth.label_of(dropped)
    n_liars = int((truth.labels.label != HONEST).sum())
    metrics["cleaning"] = {"dropped": n_drop, "liars_dropped": int((lab_drop != HONEST).sum()),
                           "precision": float((lab_drop != HONEST).mean()) if n_drop else float("nan"),
                           "recall": float((lab_drop != HONEST).sum() / max(n_liars, 1))}  # fmt: skip
    cleaned = poisoned[~poisoned["prb_id"].isin(dropped)].reset_index(drop=True)

    # ---- accuracy: PrefixPairMedian (cheap) and the tiny model, on the same held-out rows
    liar_ids = truth.labels.loc[truth.labels.label != HONEST, "prb_id"].to_numpy()
    liar_sp = set(address_prefix(poisoned.loc[poisoned.prb_id.isin(liar_ids), "src_addr"].to_numpy(object)))
    fut_ok = future[future.rtt > 0].reset_index(drop=True)
    hel_ok = heldout[heldout.rtt > 0].reset_index(drop=True)
    fut_ok = fut_ok[~fut_ok.prb_id.isin(liar_ids)].reset_index(drop=True)  # honest sources only
    tgt = np.isin(address_prefix(fut_ok.src_addr.to_numpy(object)), list(liar_sp)) | (
        fut_ok.dst_addr.to_numpy(object) == truth.sybil_target
    )
    evals = {"heldout_probes": hel_ok, "future": fut_ok, "future_targeted": fut_ok[tgt]}
    train_sets = {"clean": clean, "poisoned": poisoned, "cleaned": cleaned}
    base = {}
    for name, ev in evals.items():
        base[name] = {}
        for s, tr in train_sets.items():
            b = PrefixPairMedian().fit(tr)
            pred = b.predict(ev.src_addr.to_numpy(object), ev.dst_addr.to_numpy(object), None)
            base[name][s] = _median_rel_error(pred, ev.rtt.to_numpy(np.float64))
    metrics["prefix_pair_median_rel_p50"] = base
    metrics["eval_rows"] = {k: len(v) for k, v in evals.items()}
    accuracy = {f"PPM {k}": v for k, v in base.items()}
    if cfg.train_steps > 0:
        paths["cleaned"] = _write_split(cleaned, run.splits / "cleaned_train.parquet")
        rec["cleaned"] = run.records / "cleaned"
        records.write_probe_records(paths["cleaned"], rec["cleaned"], rec_cfg)
        say("poisoning: training on the cleaned split")
        results["cleaned"] = _train_tiny(
            rec["cleaned"], rec["heldout"], run.checkpoints / "cleaned", cfg, say
        )
        metrics["model_eval_loss"] = {k: float(r.eval_loss) for k, r in results.items()}
        rows = _model_eval_rows(evals, cfg)
        metrics["model_rel_p50"] = {}
        from pingllm_core.query.engine import QueryEngine

        for s in ("poisoned", "cleaned"):
            eng = QueryEngine.load(run.checkpoints / s)
            pred = np.array(
                [
                    eng.predict(a, b, time=None).median
                    for a, b in zip(rows.src_addr, rows.dst_addr, strict=True)
                ]
            )
            metrics["model_rel_p50"][s] = _median_rel_error(pred, rows.rtt.to_numpy(np.float64))
        accuracy["tiny model"] = metrics["model_rel_p50"]
    metrics["seconds"] = time.perf_counter() - t0
    fig = fig_poisoning(scores, liar_ids, accuracy, out_dir / "poisoning.png")

    table = cons.copy()
    table.insert(0, "label", truth.label_of(table.index.to_numpy()))
    for k, v in scores.items():
        table[f"score_{k}"] = v.reindex(table.index).to_numpy()
    for c in nll.columns:
        table[c] = nll[c].reindex(table.index).to_numpy()
    table["dropped"] = table.index.isin(dropped)
    table.to_csv(out_dir / "probe_scores.csv")
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(metrics, nan=None), indent=2))
    return ExperimentResult(metrics, fig, table, metrics["seconds"])


def _model_eval_rows(evals: Mapping[str, pd.DataFrame], cfg: ExperimentConfig) -> pd.DataFrame:
    """Half targeted future rows, half held-out-probe rows (drawn with cfg.seed)."""
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for name, n in (
        ("future_targeted", cfg.model_rows // 2),
        ("heldout_probes", cfg.model_rows - cfg.model_rows // 2),
    ):
        ev = evals[name]
        if len(ev):
            parts.append(ev.iloc[np.sort(rng.choice(len(ev), size=min(n, len(ev)), replace=False))])
    return pd.concat(parts, ignore_index=True) if parts else evals["heldout_probes"].iloc[:0]


def _below_floor_share(df: pd.DataFrame, truth: PoisonTruth, world) -> float:
    """Ground-truth diagnostic: share of deflated RTTs below great-circle distance / 100 km per ms."""
    from pingllm_core.ingest.synth import FIBRE_KM_PER_MS
    from pingllm_core.ingest.synth_geo import great_circle_km

    sel = df[truth.row_kind == "deflate"]
    if sel.empty:
        return float("nan")
    nt = world.node_table()
    where = {ip: i for i, ip in enumerate(nt["ip"])}
    si = np.array([where.get(a, -1) for a in sel.src_addr], np.int64)
    di = np.array([where.get(a, -1) for a in sel.dst_addr], np.int64)
    ok = (si >= 0) & (di >= 0)
    if not ok.any():
        return float("nan")
    km = great_circle_km(nt["lat"][si[ok]], nt["lon"][si[ok]], nt["lat"][di[ok]], nt["lon"][di[ok]])
    return float(np.mean(sel.rtt.to_numpy()[ok] < km / FIBRE_KM_PER_MS))

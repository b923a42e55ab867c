"""Evaluation (SPEC section 8): the model and every baseline on the same rows, metrics, figures, report.

The reference losses on token batches (unigram, RTT marginal, per RTT byte) are in token_losses.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pingllm_core.data import tokens as T
from pingllm_core.evaluation import figures as F
from pingllm_core.evaluation import metrics as M
from pingllm_core.evaluation.baselines import fit_all_baselines, to_unix_seconds
from pingllm_core.evaluation.report import jsonable, write_report

LOG_FLOOR = 1e-12  # probability floor for log P of a code the pruned distribution does not hold


@dataclass(frozen=True)
class EvalConfig:
    """How many rows each part of the evaluation uses (all drawn reproducibly from `seed`)."""

    rows_per_split: int = 150  # cold-start rows per split (heldout_probes, future unseen pairs)
    context_sizes: tuple[int, ...] = (0, 1, 2, 5, 10)  # few-shot context sizes for the error curve
    context_rows: int = 40  # held-out rows evaluated at every context size
    live_targets: int = 6  # pairs in the live-ping distribution grid
    live_samples: int = 300  # samples per pair (truth and model) in that grid
    kl_pairs: int = 20  # pairs per split for the 50-bin KL of the model vs the pair's empirical RTTs
    mode_contexts: int = 24  # probe sequences for the prediction-mode accuracy figure
    mode_length: int = 8  # measurements per such sequence
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows_per_split <= 0 or self.context_rows <= 0:
            raise ValueError("rows_per_split and context_rows must be positive")


@dataclass
class EvalResult:
    """Numbers, figures and the report written by `evaluate`."""

    metrics: dict
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0


def load_split(path: Path) -> pd.DataFrame:
    """A split Parquet file as a DataFrame with `time` in unix seconds."""
    df = pq.read_table(path).to_pandas()
    df["time"] = to_unix_seconds(df["event_time"].to_numpy())
    return df


def context_rows(df: pd.DataFrame, row: int, k: int) -> pd.DataFrame:
    """Up to k measurements of the same source just before row `row` (df sorted by src, time)."""
    src, t = df.src_addr.iat[row], df.time.iat[row]
    prev = df.iloc[max(0, row - 4 * k) : row]
    return prev[(prev.src_addr == src) & (prev.time < t)].tail(k)


def context_last_seen(df: pd.DataFrame, row: int, k: int, fallback: float) -> float:
    """The history baseline given the same context as the model: the last successful RTT of row `row`'s pair
    among its k context measurements, else `fallback` (the baseline's prediction from train)."""
    prev = context_rows(df, row, k) if k > 0 else df.iloc[:0]
    hit = prev[(prev.dst_addr == df.dst_addr.iat[row]) & (prev.rtt > 0)]
    return float(hit.rtt.iat[-1]) if len(hit) else float(fallback)


def context_before(df: pd.DataFrame, row: int, k: int, timed: bool = True):
    """`context_rows` as query measurements (timestamped when `timed`); None if there are none."""
    from pingllm_core.query.context import make_measurements

    if k <= 0:
        return None
    prev = context_rows(df, row, k)
    if prev.empty:
        return None
    times = prev.time.to_numpy() if timed else np.full(len(prev), -1)
    return make_measurements(
        times.tolist(), prev.src_addr.tolist(), prev.dst_addr.tolist(), prev.rtt.tolist()
    )


def _score(pred, rtt: float) -> dict:
    """Per-row numbers from one RttPrediction and the true RTT (ms, -1 failed)."""
    values = pred.rtt_ms
    out = {"p_fail": pred.p_fail, "median": pred.median, "failed": rtt < 0}
    if rtt < 0:
        out["logp"] = float(np.log(max(pred.p_fail, LOG_FLOOR)))
        return out
    code = int(T.encode_rtt_ms(np.array([rtt]))[0])
    hit = pred.probs[pred.codes == code]
    p_code = float(hit[0]) if len(hit) else 0.0
    out["nll_code"] = -float(np.log(max(p_code, LOG_FLOOR)))
    out["logp"] = float(np.log(max((1 - pred.p_fail) * p_code, LOG_FLOOR)))
    probs = pred.probs[None]
    out["crps"] = float(M.crps_discrete(values, probs, np.array([rtt]))[0])
    out["covered80"] = M.interval_coverage(values, probs, np.array([rtt]), 0.8)
    out["pit"] = float(M.pit_values(values, probs, np.array([rtt]), seed=len(values))[0])
    return out


def model_rows(engine, df: pd.DataFrame, rows: np.ndarray, k: int, timed: bool = True) -> pd.DataFrame:
    """Model predictions for `rows` of df with k context measurements each (time given when `timed`)."""
    out = []
    for r in rows:
        ctx = context_before(df, int(r), k, timed)
        t = int(df.time.iat[r]) if timed else None
        pred = engine.predict(df.src_addr.iat[r], df.dst_addr.iat[r], time=t, context=ctx)
        out.append(
            {"row": int(r), "context": 0 if ctx is None else len(ctx.rtt), **_score(pred, df.rtt.iat[r])}
        )
    return pd.DataFrame(out)


def _pick(n_avail: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_avail, size=min(n, n_avail), replace=False)) if n_avail else np.zeros(0, int)


def _summarise(
    scored: pd.DataFrame,
    df: pd.DataFrame,
    rtt_preds: dict[str, np.ndarray],
    fail_preds: dict[str, np.ndarray],
) -> dict:
    """Point metrics for the model and each RTT baseline, distribution metrics for the model, failure metrics
    for the model and each failure baseline (`fail_preds`: P(failure) per row)."""
    true = df.rtt.to_numpy()[scored.row.to_numpy()]
    ok = true > 0
    out: dict = {"rows": int(len(scored)), "failed_rows": int((~ok).sum())}
    out["model"] = M.point_metrics(scored["median"].to_numpy()[ok], true[ok])
    for name, p in rtt_preds.items():
        out[name] = M.point_metrics(p[ok], true[ok])
        # A point forecast is a distribution with all its mass on one value: its CRPS is its absolute error.
        out[name]["crps"] = out[name]["mae"]
    good = scored[ok]
    if len(good):
        out["model"].update(
            nll_code=float(good.nll_code.mean()),
            crps=float(good.crps.mean()),
            coverage80=float(good.covered80.mean()),
        )
    out["model_failure"] = M.failure_metrics(scored.p_fail.to_numpy(), ~ok)
    for name, p in fail_preds.items():
        out[f"{name}_failure"] = M.failure_metrics(p, ~ok)
    return out


def evaluate(
    engine,
    splits_dir: Path,
    out_dir: Path,
    cfg: EvalConfig,
    truth=None,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate a QueryEngine against baselines on held-out probes and future unseen pairs; write figures."""
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    train = load_split(splits_dir / "train.parquet")
    baselines = fit_all_baselines(train, seed=cfg.seed)
    say(f"fitted {len(baselines)} baselines on {len(train)} train rows")
    seen = set(zip(train.src_addr, train.dst_addr, strict=True))
    splits = {}
    held = load_split(splits_dir / "heldout_probes.parquet").sort_values(["src_addr", "time"], kind="stable")
    splits["heldout_probes"] = held.reset_index(drop=True)
    fut = load_split(splits_dir / "future.parquet").sort_values(["src_addr", "time"], kind="stable")
    splits["future"] = fut.reset_index(drop=True)
    # The time-clean comparison on pairs train never saw (empty when every probe keeps fixed targets).
    unseen = np.array([(s, d) not in seen for s, d in zip(fut.src_addr, fut.dst_addr, strict=True)], bool)
    splits["future_unseen_pairs"] = fut[unseen].reset_index(drop=True)

    metrics: dict = {"splits": {}, "by_ip_version": {}, "context": {}}
    rel_errors: dict[str, list[np.ndarray]] = {}
    all_scored = []
    for name, df in splits.items():
        if df.empty:
            say(f"{name}: no rows to evaluate")
            continue
        rows = _pick(len(df), cfg.rows_per_split, rng)
        scored = model_rows(engine, df, rows, k=0)
        scored["split"] = name
        scored["ip_version"] = df.ip_version.to_numpy()[rows]
        src, dst, tt = (df[c].to_numpy()[rows] for c in ("src_addr", "dst_addr", "time"))
        rtt_preds = {n: b.predict(src, dst, tt) for n, b in baselines.items() if b.predicts_rtt}
        fail_preds = {
            n: b.predict_fail(src, dst, tt)
            for n, b in baselines.items()
            if b.predicts_failure and not b.predicts_rtt
        }
        if truth is not None:
            rtt_preds["ground_truth_median"] = truth.true_median_rtt(list(src), list(dst), tt)
        metrics["splits"][name] = _summarise(scored, df, rtt_preds, fail_preds)
        for v in (4, 6):
            sel = scored.ip_version.to_numpy() == v
            if sel.any():
                sub_rtt = {k: p[sel] for k, p in rtt_preds.items()}
                sub_fail = {k: p[sel] for k, p in fail_preds.items()}
                metrics["by_ip_version"][f"{name}/ipv{v}"] = _summarise(scored[sel], df, sub_rtt, sub_fail)
        true = df.rtt.to_numpy()[rows]
        rel_errors.setdefault("model", []).append(M.relative_errors(scored["median"].to_numpy(), true))
        for n, p in rtt_preds.items():
            rel_errors.setdefault(n, []).append(M.relative_errors(p, true))
        all_scored.append(scored)
        say(f"{name}: {len(rows)} rows scored, model median rel. error "
            f"{metrics['splits'][name]['model']['rel_p50']:.3f}")  # fmt: skip

    figures = [F.fig_relative_error_cdf({k: np.concatenate(v) for k, v in rel_errors.items()},
                                        fig_dir / "relative_error_cdf.png")]  # fmt: skip
    scored_all = pd.concat(all_scored) if all_scored else pd.DataFrame()
    if "pit" in scored_all:
        figures.append(F.fig_calibration(scored_all.pit.dropna().to_numpy(), fig_dir / "calibration_pit.png"))
    figures += _context_curve(engine, splits, baselines["source_last_seen"], cfg, rng, metrics, fig_dir, say)
    figures += _timestamp_figure(engine, splits["heldout_probes"], cfg, rng, metrics, fig_dir)
    metrics["pair_kl"] = {n: _pair_kl(engine, df, cfg) for n, df in splits.items() if len(df)}
    figures += _live_grid(engine, splits, cfg, truth, metrics, fig_dir)
    figures += _mode_accuracy(engine, splits["heldout_probes"], cfg, metrics, fig_dir)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=1))
    report = write_report(out_dir / "report.md", metrics, figures, asdict(cfg))
    return EvalResult(metrics=metrics, figures=figures, report=report, seconds=metrics["seconds"])


def _context_curve(engine, splits, history, cfg, rng, metrics, fig_dir, say) -> list[Path]:
    """Median relative error against the number of the probe's own measurements just before each row, for the
    model and for the history baseline (`history`: source_last_seen, fitted on train) given the same ones."""
    curves: dict[str, list[float]] = {}
    for name in ("heldout_probes", "future"):
        df = splits.get(name)
        ok = np.flatnonzero(df.rtt.to_numpy() > 0) if df is not None and len(df) else np.zeros(0, int)
        rows = ok[_pick(len(ok), cfg.context_rows, rng)] if len(ok) else ok
        if not len(rows):
            continue
        true = df.rtt.to_numpy()[rows]
        src, dst, tt = (df[c].to_numpy()[rows] for c in ("src_addr", "dst_addr", "time"))
        train_pred = history.predict(src, dst, tt)
        for k in cfg.context_sizes:
            scored = model_rows(engine, df, rows, k)
            base = [context_last_seen(df, int(r), k, p) for r, p in zip(rows, train_pred, strict=True)]
            model_err = M.point_metrics(scored["median"].to_numpy(), true)["rel_p50"]
            base_err = M.point_metrics(np.array(base), true)["rel_p50"]
            metrics["context"][f"{name}/k{k}"] = {
                "model": model_err, history.name: base_err, "rows": int(len(rows)),
                "mean_context_used": float(scored.context.mean()),
            }  # fmt: skip
            curves.setdefault(f"model, {name}", []).append(model_err)
            curves.setdefault(f"{history.name} + same context, {name}", []).append(base_err)
            say(
                f"{name}, context {k}: median relative error {model_err:.3f} ({history.name}: {base_err:.3f})"
            )
    if not curves:
        return []
    return [F.fig_error_vs_context(list(cfg.context_sizes), curves, fig_dir / "error_vs_context.png")]


def _timestamp_figure(engine, df, cfg, rng, metrics, fig_dir) -> list[Path]:
    """Figure 1: log P(correct RTT tokens) with timestamps vs without (same rows, same context)."""
    rows = _pick(len(df), cfg.context_rows, rng)
    if not len(rows):
        return []
    k = max(cfg.context_sizes)
    with_ts = model_rows(engine, df, rows, k, timed=True).logp.to_numpy()
    without = model_rows(engine, df, rows, k, timed=False).logp.to_numpy()
    metrics["timestamp_logp"] = {"with": float(with_ts.mean()), "without": float(without.mean())}
    return [F.fig_timestamp_logprob(with_ts, without, fig_dir / "timestamp_logprob.png")]


def _busiest_pairs(ok: pd.DataFrame, n: int, min_rows: int = 1) -> pd.DataFrame:
    """The n (src, dst) pairs with the most rows in `ok` (ties by address), with their median time `t`."""
    pairs = ok.groupby(["src_addr", "dst_addr"]).agg(n=("rtt", "size"), t=("time", "median")).reset_index()
    pairs = pairs[pairs.n >= min_rows]
    return pairs.sort_values(["n", "src_addr", "dst_addr"], ascending=[False, True, True]).head(n)


def _model_samples(engine, src: str, dst: str, t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n RTTs (ms) drawn from the model's predicted distribution given success."""
    pred = engine.predict(src, dst, time=t)
    return rng.choice(pred.rtt_ms, size=n, p=pred.probs)


def _pair_kl(engine, df: pd.DataFrame, cfg: EvalConfig) -> dict:
    """50-bin KL(empirical RTTs of a pair in this split || model samples) over the best-covered pairs."""
    rng = np.random.default_rng(cfg.seed + 2)
    ok = df[df.rtt > 0]
    groups = {}
    for p in _busiest_pairs(ok, cfg.kl_pairs, min_rows=10).itertuples():
        model = _model_samples(engine, p.src_addr, p.dst_addr, int(p.t), cfg.live_samples, rng)
        real = ok.rtt[(ok.src_addr == p.src_addr) & (ok.dst_addr == p.dst_addr)].to_numpy()
        groups[(p.src_addr, p.dst_addr)] = (real, model)
    kl = M.per_pair_kl(groups, bins=50, min_samples=10).kl.dropna() if groups else pd.Series(dtype=float)
    return {"pairs": int(len(kl)), "mean": float(kl.mean()) if len(kl) else float("nan"),
            "median": float(kl.median()) if len(kl) else float("nan")}  # fmt: skip


def _live_grid(engine, splits, cfg, truth, metrics, fig_dir) -> list[Path]:
    """Figure 2: real (or freshly simulated) RTT histograms vs model samples for held-out pairs, with KL."""
    rng = np.random.default_rng(cfg.seed + 1)
    df = pd.concat([d for d in splits.values() if len(d)])
    ok = df[df.rtt > 0]
    pairs = _busiest_pairs(ok, cfg.live_targets)
    targets, kls = [], []
    for p in pairs.itertuples():
        if truth is not None:
            real = truth.sample_live(p.src_addr, p.dst_addr, int(p.t), cfg.live_samples, seed=cfg.seed)
            real = real[real > 0]
        else:
            real = ok[(ok.src_addr == p.src_addr) & (ok.dst_addr == p.dst_addr)].rtt.to_numpy()
        model = _model_samples(engine, p.src_addr, p.dst_addr, int(p.t), cfg.live_samples, rng)
        if len(real) < 2:
            continue
        kls.append(M.kl_binned(real, model))
        targets.append((f"{p.src_addr} → {p.dst_addr}", real, model))
    if not targets:
        return []
    metrics["live_kl"] = {"mean": float(np.mean(kls)), "per_target": [float(k) for k in kls]}
    return [F.fig_live_grid(targets, kls, fig_dir / "live_ping_grid.png")]


_MODE_FIELDS = {
    "src_ip": T.FIELD_SRC,
    "dst_ip": T.FIELD_DST,
    "rtt": T.FIELD_RESULT,
    "timestamp": T.FIELD_TIME,
}
_MODE_GROUPS = {"src_ip": T.GROUP_SRC, "dst_ip": T.GROUP_DST, "rtt": T.GROUP_RTT, "timestamp": T.GROUP_TIME}


def _mode_accuracy(engine, df, cfg, metrics, fig_dir) -> list[Path]:
    """Figure 3: each field predicted last; mean P(correct token) over that field's tokens."""
    import jax
    import jax.numpy as jnp

    groups = [g for _, g in df.groupby("src_addr", sort=True) if len(g) >= 2][: cfg.mode_contexts]
    if not groups:
        return []
    table, nll_table = {}, {}
    for name, fld in _MODE_FIELDS.items():
        order = [f for f in (T.FIELD_SRC, T.FIELD_DST, T.FIELD_TIME, T.FIELD_RESULT) if f != fld] + [fld]
        probs = []
        for g in groups:
            g = g.tail(cfg.mode_length)
            m = T.Measurements.from_strings(g.time.to_numpy(), g.src_addr.tolist(), g.dst_addr.tolist(),
                                            g.rtt.to_numpy())  # fmt: skip
            toks = T.encode_measurements(
                m, np.ones(len(g), bool), np.tile(np.array(order, np.int8), (len(g), 1))
            )
            toks = toks[: engine.cfg.max_len]
            logits = engine.model(jnp.asarray(toks[None], jnp.int32))[0]
            p = np.asarray(jax.nn.softmax(logits[:-1].astype(jnp.float32), axis=-1))
            p_correct = p[np.arange(len(toks) - 1), toks[1:]]
            grp = T.token_group(toks)[1:]
            first_end = (
                int(np.flatnonzero(toks == T.MEASUREMENT_START)[1]) if (toks == 0).sum() > 1 else len(toks)
            )
            pos = np.arange(1, len(toks))
            sel = (grp == _MODE_GROUPS[name]) & (
                pos >= first_end
            )  # skip the first (absolute-time) measurement
            probs.append(p_correct[sel])
        table[name] = float(np.concatenate(probs).mean()) if probs else float("nan")
        # The same tokens as NLL (nats/token): the per-field loss, e.g. whether RTT tokens are learned at all.
        nll_table[name] = (
            float(-np.log(np.maximum(np.concatenate(probs), LOG_FLOOR)).mean()) if probs else float("nan")
        )
    metrics["mode_accuracy"] = table
    metrics["mode_nll"] = nll_table
    return [F.fig_mode_accuracy(table, fig_dir / "mode_accuracy.png")]

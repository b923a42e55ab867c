"""Evaluation figures (SPEC section 8) and the experiments' (privacy, poisoning) as PNG files, plus a Markdown
table helper for the report.

Every figure function writes one PNG at `path` (parent folders created) and returns the Path.
Matplotlib runs on the non-interactive Agg backend; figures are closed after saving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from pingllm_core.evaluation.metrics import finite_values, membership_audit, roc_points  # noqa: E402

DPI = 110  # readable on screen and in MLflow without huge files


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _log_x(ax) -> None:
    """Log x axis with plain-number labels: 1-2-5 steps over narrow ranges, decades over wide ones."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()  # call after plotting so the limits reflect the data
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 150 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_edges(arrays: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """Log-spaced bin edges over the positive range of all arrays (a unit range if none is positive)."""
    pos = [a[np.isfinite(a) & (a > 0)] for a in arrays]
    pos = [a for a in pos if len(a)]
    if not pos:
        return np.geomspace(1.0, 10.0, bins + 1)
    lo, hi = min(a.min() for a in pos), max(a.max() for a in pos)
    if hi <= lo * (1 + 1e-9):
        lo, hi = lo * 0.9, hi * 1.1
    return np.geomspace(lo, hi, bins + 1)


def fig_timestamp_logprob(logp_with_ts: np.ndarray, logp_without_ts: np.ndarray, path: str | Path) -> Path:
    """Overlaid histograms of log P(correct RTT tokens) with vs without timestamps in the context."""
    a, b = np.asarray(logp_with_ts, np.float64), np.asarray(logp_without_ts, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    both = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
    edges = np.linspace(both.min(), both.max() + 1e-9, 50)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.hist(a, edges, alpha=0.55, label=f"with timestamps (mean {a.mean() if len(a) else np.nan:.3f})")
    ax.hist(b, edges, alpha=0.55, label=f"without timestamps (mean {b.mean() if len(b) else np.nan:.3f})")
    ax.set(
        title="Effect of timestamps on RTT prediction",
        xlabel="log P(correct RTT tokens) [nats]",
        ylabel="measurements",
    )
    ax.legend()
    return _save(fig, path)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of the positive `values` in each bin (sums to 1): what the live grid plots. Not a density per ms,
    under which a sliver of mass in a narrow low log-spaced bin would tower over the real peak."""
    x = np.asarray(values, np.float64)
    counts, _ = np.histogram(x[x > 0], edges)
    return counts / max(counts.sum(), 1)


def fig_live_grid(
    targets: list[tuple[str, np.ndarray, np.ndarray]], kls: list[float], path: str | Path, bins: int = 50
) -> Path:
    """Grid of RTT histograms, real live pings vs model samples, with the per-target KL in each title."""
    if len(targets) != len(kls):
        raise ValueError("one KL per target")
    n = max(len(targets), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel()[len(targets) :]:
        ax.axis("off")
    for ax, (label, real, model), kl in zip(axes.ravel(), targets, kls, strict=False):
        real, model = np.asarray(real, np.float64), np.asarray(model, np.float64)
        edges = _log_edges([real, model], bins)
        for x, name in ((real, "real (live)"), (model, "model")):
            ax.stairs(bin_shares(x, edges), edges, fill=True, alpha=0.55, label=name)
        _log_x(ax)
        ax.set_title(f"{label}\nKL = {kl:.3f} nats", fontsize=9)
        ax.set_xlabel("RTT [ms]")
        ax.set_ylabel("share of samples per bin")
        ax.legend(fontsize=7)
    fig.suptitle("Live ping distributions: real vs model")
    return _save(fig, path)


def fig_mode_accuracy(table: Mapping[str, float], path: str | Path) -> Path:
    """Bar chart: which field was predicted last -> mean P(correct token)."""
    names, vals = list(table), [float(table[k]) for k in table]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bars = ax.bar(names, vals, color="tab:blue", label="mean P(correct token)")
    ax.bar_label(bars, fmt="%.3f")
    ax.set(
        title="Prediction-mode accuracy",
        xlabel="field predicted last",
        ylabel="mean P(correct token)",
        ylim=(0, 1.05),
    )
    ax.legend()
    return _save(fig, path)


def fig_relative_error_cdf(errors: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Empirical CDFs of the relative error |pred-true|/true per method, on a log x axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, err in errors.items():
        e = np.sort(np.asarray(err, np.float64))
        e = e[np.isfinite(e)]
        if not len(e):
            continue
        e = np.maximum(e, 1e-4)  # log axis: show exact hits at 0.01%
        ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=f"{name} (median {np.median(e):.3f})")
    _log_x(ax)
    ax.set(
        title="Relative error CDF", xlabel="relative error |pred - true| / true", ylabel="fraction of rows"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_error_vs_context(ctx_sizes: list[int], errors: Mapping[str, list[float]], path: str | Path) -> Path:
    """Error metric (median relative error) against the number of context measurements, per method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(ctx_sizes))  # even spacing: sizes like 0, 1, 2, 5, 10, max are categories
    for name, vals in errors.items():
        ax.plot(x, vals, marker="o", label=name)
    ax.set_xticks(x, [str(c) for c in ctx_sizes])
    ax.set(
        title="Error vs context size",
        xlabel="context measurements (count)",
        ylabel="median relative error",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_calibration(pit: np.ndarray, path: str | Path, bins: int = 20) -> Path:
    """PIT histogram (density) with the uniform line a calibrated model would follow."""
    pit = np.asarray(pit, np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.hist(pit[np.isfinite(pit)], bins=bins, range=(0, 1), density=True, alpha=0.7, label="PIT")
    ax.axhline(1.0, color="k", linestyle="--", label="uniform (calibrated)")
    ax.set(title="Calibration (PIT histogram)", xlabel="PIT value", ylabel="density", xlim=(0, 1))
    ax.legend()
    return _save(fig, path)


def fig_loss_curve(
    history: list[tuple[int, float]],
    path: str | Path,
    eval_history: Sequence[tuple[int, float] | tuple[int, float, float]] | None = None,
    rtt_history: list[tuple[int, float]] | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Training, held-out and RTT-only losses (nats per token) against step in one figure.

    `eval_history` rows are (step, loss) or (step, loss, RTT loss); `references` draws horizontal lines
    (e.g. the held-out loss of the unigram model and of one global RTT distribution).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    if history:
        s, v = zip(*history, strict=True)
        ax.plot(s, v, color="C0", label="train loss (all tokens)")
    if rtt_history:
        s, v = zip(*rtt_history, strict=True)
        ax.plot(s, v, color="C1", alpha=0.8, label="train RTT loss (RTT tokens)")
    if eval_history:
        steps = [row[0] for row in eval_history]
        ax.plot(steps, [row[1] for row in eval_history], "o--", color="C0", label="held-out loss")
        if all(len(row) > 2 for row in eval_history):
            rtt = [row[2] for row in eval_history]  # type: ignore[misc]
            ax.plot(steps, rtt, "s--", color="C1", label="held-out RTT loss")
    for i, (label, value) in enumerate((references or {}).items()):
        if math.isfinite(value):
            ax.axhline(value, color=f"C{2 + i}", linestyle=":", linewidth=1.2, label=label)
    ax.set(title="Training loss", xlabel="step", ylabel="cross-entropy [nats/token]")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_membership_roc(
    member_losses: np.ndarray | Mapping[str, np.ndarray],
    nonmember_losses: np.ndarray | Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "loss-threshold membership inference",
) -> Path:
    """ROC (linear and log-log) and loss histograms of the membership attack (experiments.privacy).

    Pass arrays for one curve, or two mappings with the same keys (e.g. "probe", "context", "dst field")
    for several curves on the same axes; the histogram panel shows the first.
    """
    if isinstance(member_losses, Mapping) != isinstance(nonmember_losses, Mapping):
        raise TypeError("pass two arrays or two mappings with the same keys")
    if isinstance(member_losses, Mapping):
        curves = {k: (member_losses[k], nonmember_losses[k]) for k in member_losses}
    else:
        curves = {"per-probe loss": (member_losses, nonmember_losses)}
    fig, (ax_lin, ax_log, ax_hist) = plt.subplots(1, 3, figsize=(13.5, 4.2))
    for name, (m, n) in curves.items():
        fpr, tpr, _ = roc_points(m, n)
        res = membership_audit(m, n)
        label = f"{name}: AUC {res['auc']:.3f}, TPR@1% {res['tpr_at_1pct_fpr']:.3f}"
        ax_lin.plot(fpr, tpr, label=label)
        floor = 0.5 / max(res["n_nonmembers"], res["n_members"])  # where zeros go on the log axes
        ax_log.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=name)
    for ax in (ax_lin, ax_log):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        ax.set_xlabel("false positive rate (non-members flagged)")
        ax.set_ylabel("true positive rate (members found)")
    ax_lin.set_title(title)
    ax_lin.legend(fontsize=8, loc="lower right")
    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ax_log.set_title("low-FPR regime (log-log)")
    m0, n0 = (finite_values(a) for a in next(iter(curves.values())))
    edges = np.linspace(min(m0.min(), n0.min()), max(m0.max(), n0.max()) + 1e-9, 31)
    ax_hist.hist(n0, bins=edges, alpha=0.6, density=True, label=f"non-members (n={len(n0)})")
    ax_hist.hist(m0, bins=edges, alpha=0.6, density=True, label=f"members (n={len(m0)})")
    ax_hist.set_xlabel(f"{next(iter(curves))} (mean token NLL, nats)")
    ax_hist.set_ylabel("density")
    ax_hist.legend(fontsize=8)
    return _save(fig, path)


def fig_poisoning(
    scores: Mapping[str, pd.Series],
    liar_ids: np.ndarray,
    accuracy: Mapping[str, Mapping[str, float]],
    path: str | Path,
) -> Path:
    """ROC curves of each poisoning detector (all liars: probes in `liar_ids`) and bars of median relative
    error per model and training set (experiments.poisoning)."""
    fig, (ax_roc, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.4))
    for name, sc in scores.items():
        lab = np.isin(sc.index.to_numpy(), liar_ids)
        s = sc.to_numpy(np.float64)
        s = np.where(np.isfinite(s), s, np.nanmin(s) - 1 if np.isfinite(s).any() else 0.0)
        if lab.all() or not lab.any():
            continue
        fpr, tpr, _ = roc_curve(lab, s)
        ax_roc.plot(fpr, tpr, label=f"{name}: AUC {roc_auc_score(lab, s):.3f}")
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax_roc.axvline(0.05, color="grey", linewidth=0.6, linestyle="--")
    ax_roc.set_xlabel("false positive rate (honest probes flagged)")
    ax_roc.set_ylabel("true positive rate (liars found)")
    ax_roc.set_title(f"poisoning detection ({len(liar_ids)} liars)")
    ax_roc.legend(fontsize=8, loc="lower right")
    groups = list(accuracy)
    sets = sorted({k for g in accuracy.values() for k in g}, key=["clean", "poisoned", "cleaned"].index)
    width = 0.8 / max(len(sets), 1)
    for i, s in enumerate(sets):
        vals = [accuracy[g].get(s, np.nan) for g in groups]
        ax_bar.bar(
            np.arange(len(groups)) + (i - (len(sets) - 1) / 2) * width, vals, width, label=f"trained on {s}"
        )
    ax_bar.set_xticks(np.arange(len(groups)), groups, fontsize=8, rotation=12)
    ax_bar.set_ylabel("median relative error of the predicted median RTT")
    ax_bar.set_title("accuracy on the same held-out rows")
    ax_bar.legend(fontsize=8)
    return _save(fig, path)


def _fmt(v: object) -> str:
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "n/a" if not np.isfinite(v) else f"{float(v):.4g}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    """GitHub Markdown table of dict rows; columns in first-seen order, floats to 4 significant digits."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fig_tiers(rows: Sequence[dict], path: str | Path) -> Path:
    """Accuracy vs parameters (eval loss and median relative error), each point annotated with its latency."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
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
        _log_x(ax)
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("tiers: accuracy vs size (p50 CPU query latency annotated)", fontsize=10)
    return _save(fig, path)


def fig_mitigation(runs: Sequence, path: str | Path) -> Path:
    """The attack's ROC for every DP-SGD variant (`privacy_dp.MitigationRun`: name, member_losses,
    nonmember_losses) on the same axes, with the plain run's loss histograms."""
    return fig_membership_roc(
        {r.name: r.member_losses for r in runs},
        {r.name: r.nonmember_losses for r in runs},
        path,
        title="membership inference before/after DP-SGD",
    )

"""Evaluation figures (SPEC section 8) as PNG files, plus a Markdown table helper for the report.

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
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

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

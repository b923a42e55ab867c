"""Evaluation metrics (SPEC section 8) and the membership-inference audit's: pure functions on numpy arrays.

Units: RTT values and errors are milliseconds; relative errors are fractions (0.1 = 10%); NLL is
nats per measurement; CRPS is milliseconds; KL is nats. A failed measurement (rtt = -1.0) never enters
an RTT metric: callers pass successful rows, and the point metrics drop rows with true <= 0 themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

NLL_EPS = 1e-12  # probability floor so a zero-probability true code costs ~27.6 nats, not infinity
KL_EPS = 1e-4  # additive smoothing (probability per bin) so empty predicted bins keep KL finite
_CHUNK_ELEMENTS = 1 << 22  # rows x support processed at once by the discrete-CDF metrics (~32 MB)


def point_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAE and median AE (ms), median/p75/p90/p95 relative error |pred-true|/true, n; rows with true > 0."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    keep = (true > 0) & np.isfinite(pred) & np.isfinite(true)
    if not keep.any():
        nan = float("nan")
        return {
            "mae": nan,
            "median_ae": nan,
            "rel_p50": nan,
            "rel_p75": nan,
            "rel_p90": nan,
            "rel_p95": nan,
            "n": 0,
        }
    ae = np.abs(pred[keep] - true[keep])
    rel = ae / true[keep]
    p50, p75, p90, p95 = np.quantile(rel, [0.5, 0.75, 0.9, 0.95])
    return {
        "mae": float(ae.mean()),
        "median_ae": float(np.median(ae)),
        "rel_p50": float(p50),
        "rel_p75": float(p75),
        "rel_p90": float(p90),
        "rel_p95": float(p95),
        "n": int(keep.sum()),
    }


def relative_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-row |pred-true|/true for rows with true > 0 (fractions; for CDF figures)."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    keep = (true > 0) & np.isfinite(pred)
    return np.abs(pred[keep] - true[keep]) / true[keep]


def nll(probs_NxK: np.ndarray, true_index_N: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (nats) of the true class; probabilities floored at `eps`."""
    probs_NxK = np.asarray(probs_NxK, np.float64)
    idx = np.asarray(true_index_N, np.int64)
    p = probs_NxK[np.arange(len(idx)), idx]
    return float(-np.mean(np.log(np.maximum(p, eps))))


def crps_discrete(values_K: np.ndarray, probs_NxK: np.ndarray, true_N: np.ndarray) -> np.ndarray:
    """Per-row CRPS (ms) of a distribution on sorted support `values_K`: exact integral of (F - 1{x>=y})^2."""
    v = np.asarray(values_K, np.float64)
    if np.any(np.diff(v) < 0):
        raise ValueError("values_K must be sorted ascending")
    probs_NxK = np.asarray(probs_NxK, np.float64)
    y_all = np.asarray(true_N, np.float64)
    widths = np.diff(v)  # [K-1] lengths of the steps where F is constant
    out = np.empty(len(y_all))
    step = max(1, _CHUNK_ELEMENTS // max(len(v), 1))
    for lo in range(0, len(y_all), step):
        p = probs_NxK[lo : lo + step]
        y = y_all[lo : lo + step, None]
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]  # tolerate probabilities that sum to 1 only up to rounding
        f = cdf[:, :-1]  # F on [v_k, v_k+1)
        # split each step at y: left part is compared with 0, right part with 1
        left = np.clip(y - v[None, :-1], 0.0, widths[None, :])
        inner = (left * f**2 + (widths[None, :] - left) * (1.0 - f) ** 2).sum(axis=1)
        # outside the support F is 0 (below v_0) or 1 (above v_K-1): only the part between y and it counts
        outer = np.maximum(v[0] - y[:, 0], 0.0) + np.maximum(y[:, 0] - v[-1], 0.0)
        out[lo : lo + step] = inner + outer
    return out


def _cdf_at(v: np.ndarray, cdf: np.ndarray, y: np.ndarray, side: str) -> np.ndarray:
    """F(y) (side='right', P(X <= y)) or F(y-) (side='left', P(X < y)) row by row."""
    k = np.searchsorted(v, y, side=side)  # number of support points counted
    padded = np.concatenate([np.zeros((len(y), 1)), cdf], axis=1)
    return padded[np.arange(len(y)), k]


def interval_coverage(
    values_K: np.ndarray, probs_NxK: np.ndarray, true_N: np.ndarray, level: float = 0.8
) -> float:
    """Share of rows whose true value lies in the central `level` interval [q_(1-l)/2, q_(1+l)/2] of the CDF."""
    v = np.asarray(values_K, np.float64)
    cdf = np.cumsum(np.asarray(probs_NxK, np.float64), axis=1)
    cdf /= cdf[:, -1:]
    y = np.asarray(true_N, np.float64)
    a = (1.0 - level) / 2.0
    # quantile q_a = smallest support value with F >= a (tiny tolerance for float sums)
    lo_idx = np.minimum((cdf < a - 1e-12).sum(axis=1), len(v) - 1)
    hi_idx = np.minimum((cdf < 1.0 - a - 1e-12).sum(axis=1), len(v) - 1)
    inside = (y >= v[lo_idx]) & (y <= v[hi_idx])
    return float(inside.mean()) if len(y) else float("nan")


def pit_values(values_K: np.ndarray, probs_NxK: np.ndarray, true_N: np.ndarray, seed: int = 0) -> np.ndarray:
    """Randomised PIT: F(y-) + U * (F(y) - F(y-)), U ~ Uniform(0,1); uniform on [0,1] if calibrated."""
    v = np.asarray(values_K, np.float64)
    cdf = np.cumsum(np.asarray(probs_NxK, np.float64), axis=1)
    cdf /= cdf[:, -1:]
    y = np.asarray(true_N, np.float64)
    below, upto = _cdf_at(v, cdf, y, "left"), _cdf_at(v, cdf, y, "right")
    u = np.random.default_rng(seed).uniform(size=len(y))
    return np.clip(below + u * (upto - below), 0.0, 1.0)


def crps_samples(samples_NxS: np.ndarray, true_N: np.ndarray) -> np.ndarray:
    """Per-row CRPS (ms) of the empirical distribution of S samples: E|X-y| - E|X-X'|/2 (exact, V-statistic)."""
    x = np.sort(np.asarray(samples_NxS, np.float64), axis=1)
    y = np.asarray(true_N, np.float64)[:, None]
    s = x.shape[1]
    term1 = np.abs(x - y).mean(axis=1)
    # sum_{i,j} |x_i - x_j| = 2 * sum_i (2i - S - 1) x_(i) for sorted x, i = 1..S
    weights = 2.0 * np.arange(1, s + 1) - s - 1
    term2 = 2.0 * (x * weights).sum(axis=1) / s**2
    return term1 - 0.5 * term2


def kl_binned(
    true_samples: np.ndarray, pred_samples: np.ndarray, bins: int = 50, eps: float = KL_EPS
) -> float:
    """KL(true || pred) in nats over `bins` log-spaced bins spanning both samples' positive range.

    Failed (<= 0) and non-finite samples are dropped. Both histograms get `eps` probability added per
    bin and are renormalised, so KL stays finite; identical samples give exactly 0.
    """
    t = np.asarray(true_samples, np.float64)
    q = np.asarray(pred_samples, np.float64)
    t, q = t[np.isfinite(t) & (t > 0)], q[np.isfinite(q) & (q > 0)]
    if len(t) == 0 or len(q) == 0:
        return float("nan")
    lo, hi = min(t.min(), q.min()), max(t.max(), q.max())
    if hi <= lo * (1 + 1e-9):  # a single value: give the bins some width
        lo, hi = lo * 0.9, hi * 1.1
    edges = np.geomspace(lo, hi, bins + 1)
    pt = np.histogram(t, edges)[0] / len(t) + eps
    pq = np.histogram(q, edges)[0] / len(q) + eps
    pt, pq = pt / pt.sum(), pq / pq.sum()
    return float(np.sum(pt * np.log(pt / pq)))


def per_pair_kl(
    groups: Mapping[Hashable, tuple[np.ndarray, np.ndarray]], bins: int = 50, min_samples: int = 1
) -> pd.DataFrame:
    """KL per pair from {pair: (true_samples, pred_samples)}: tidy frame pair, kl, n_true, n_pred."""
    rows = []
    for key, (t, q) in groups.items():
        t, q = np.asarray(t, np.float64), np.asarray(q, np.float64)
        n_t, n_q = int((t > 0).sum()), int((q > 0).sum())
        ok = n_t >= min_samples and n_q >= min_samples
        rows.append(
            {"pair": key, "kl": kl_binned(t, q, bins) if ok else float("nan"), "n_true": n_t, "n_pred": n_q}
        )
    return pd.DataFrame(rows, columns=["pair", "kl", "n_true", "n_pred"])


def failure_metrics(p_fail: np.ndarray, failed: np.ndarray) -> dict[str, float | int | str]:
    """ROC-AUC, PR-AUC (average precision), Brier score, base rate and n of failure predictions.

    With only one class present the AUCs are undefined: they come back NaN with an explanatory note.
    """
    p = np.asarray(p_fail, np.float64)
    y = np.asarray(failed, bool)
    out: dict[str, float | int | str] = {"n": int(len(y)), "note": ""}
    if len(y) == 0:
        return out | {
            "roc_auc": float("nan"),
            "pr_auc": float("nan"),
            "brier": float("nan"),
            "base_rate": float("nan"),
            "note": "no rows",
        }
    out["base_rate"] = float(y.mean())
    out["brier"] = float(brier_score_loss(y, np.clip(p, 0.0, 1.0)))
    if y.all() or not y.any():
        out.update(roc_auc=float("nan"), pr_auc=float("nan"), note="single class: AUCs undefined")
    else:
        out.update(roc_auc=float(roc_auc_score(y, p)), pr_auc=float(average_precision_score(y, p)))
    return out


def slice_table(
    df: pd.DataFrame, group_cols: list[str], metric_fn: Callable[[pd.DataFrame], Mapping[str, object]]
) -> pd.DataFrame:
    """Apply `metric_fn` (rows -> dict of metrics) to each slice of `df`: one tidy row per slice."""
    rows = []
    for key, sub in df.groupby(group_cols, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append(dict(zip(group_cols, key, strict=True)) | dict(metric_fn(sub)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------ membership inference (experiments.privacy)


def finite_values(a) -> np.ndarray:
    """`a` flattened to float64, non-finite values dropped."""
    a = np.asarray(a, np.float64).reshape(-1)
    return a[np.isfinite(a)]


def roc_points(member_losses, nonmember_losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, loss threshold) of the attack "member iff loss <= threshold", every threshold kept."""
    m, n = finite_values(member_losses), finite_values(nonmember_losses)
    if not len(m) or not len(n):
        raise ValueError("membership ROC needs at least one finite member and one finite non-member loss")
    labels = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    fpr, tpr, thr = roc_curve(labels, -np.concatenate([m, n]), drop_intermediate=False)
    return fpr, tpr, -thr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Largest TPR of any threshold whose FPR is <= max_fpr (no interpolation between thresholds)."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_audit(member_losses, nonmember_losses) -> dict:
    """Loss-threshold membership inference metrics (score = -loss; non-finite losses are dropped).

    Keys: n_members, n_nonmembers, auc, auc_se (Hanley-McNeil standard error), tpr_at_1pct_fpr,
    tpr_at_10pct_fpr, advantage (max TPR - FPR over thresholds) and its loss threshold, the Yeom et al.
    attack with the mean member loss as threshold (yeom_tpr, yeom_fpr, yeom_advantage), mean losses of both
    groups, and fpr_resolution = 1 / n_nonmembers (a TPR at an FPR below it means "at zero false positives").
    """
    m, n = finite_values(member_losses), finite_values(nonmember_losses)
    fpr, tpr, thr = roc_points(m, n)
    labels = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    auc = float(roc_auc_score(labels, -np.concatenate([m, n])))
    # Hanley & McNeil (Radiology 1982): standard error of the AUC from the two sample sizes.
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (len(m) - 1) * (q1 - auc**2) + (len(n) - 1) * (q2 - auc**2)) / (len(m) * len(n))
    gap = tpr - fpr
    best = int(np.argmax(gap))
    yeom_thr = float(m.mean())
    yeom_tpr, yeom_fpr = float((m <= yeom_thr).mean()), float((n <= yeom_thr).mean())
    return {
        "n_members": len(m),
        "n_nonmembers": len(n),
        "auc": auc,
        "auc_se": float(math.sqrt(max(var, 0.0))),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_10pct_fpr": tpr_at_fpr(fpr, tpr, 0.10),
        "advantage": float(gap[best]),
        "advantage_threshold": float(thr[best]),
        "yeom_threshold": yeom_thr,
        "yeom_tpr": yeom_tpr,
        "yeom_fpr": yeom_fpr,
        "yeom_advantage": yeom_tpr - yeom_fpr,
        "member_loss_mean": float(m.mean()),
        "nonmember_loss_mean": float(n.mean()),
        "fpr_resolution": 1.0 / len(n),
    }

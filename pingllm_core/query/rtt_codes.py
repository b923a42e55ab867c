"""RTT codes (SPEC section 4) and the distributions over them that `engine` and `rank` share.

An RTT is two byte tokens, code = 256 * high byte + low byte: a high byte (byte 1) is a bucket of 256 codes
whose value range is known, so a quantile or a threshold can be located bucket by bucket before byte 2 is
decoded. Probabilities are the model's softmax restricted to the allowed tokens and renormalised, in float64.
A leaf module: numpy and `tokens` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pingllm_core.data import tokens as T

MAX_RTT_MS = 600_000.0  # the parser rejects longer RTTs (SPEC section 1): no training row ever had one
MIN_BRANCH_PROB = 1e-4  # byte-1 values below this mass are not expanded (their mass is dropped, renormalised)
EPS = 1e-9  # tolerance on cumulative probabilities when locating a quantile
ALL_RTT_MS = T.decode_rtt_code(np.arange(65536))  # value of every RTT code, ms
BUCKET_LO = ALL_RTT_MS.reshape(256, 256).min(axis=1)  # value range of each byte-1 (high byte) bucket
BUCKET_HI = ALL_RTT_MS.reshape(256, 256).max(axis=1)
BUCKET_LOWEST = np.argmin(ALL_RTT_MS.reshape(256, 256), axis=1)  # low byte of each bucket's lowest value
CODE_RANK = np.empty(65536, np.int64)  # position of each code when sorted by RTT value, then code
CODE_RANK[np.lexsort((np.arange(65536), ALL_RTT_MS))] = np.arange(65536)
# Byte-1 buckets that can hold a plausible RTT; the rest are outside the data's support and get no mass.
PLAUSIBLE = np.concatenate([np.ones(T.BYTE0, bool), BUCKET_LO <= MAX_RTT_MS])


def restricted(logp_BxV: np.ndarray, allowed_V: np.ndarray) -> np.ndarray:
    """Probabilities over the allowed tokens only (renormalised), zeros elsewhere; float64."""
    lp = np.where(allowed_V, np.asarray(logp_BxV, np.float64), -np.inf)
    lp = lp - lp.max(axis=-1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=-1, keepdims=True)


def discrete_quantile(values: np.ndarray, probs: np.ndarray, q: float) -> float:
    """Smallest value whose cumulative probability reaches q (values sorted ascending, probs sum to 1)."""
    idx = int(np.searchsorted(np.cumsum(probs), q - EPS, side="left"))
    return float(values[min(idx, len(values) - 1)])


def result_heads(
    logp_res_BxV: np.ndarray, logp1_BxV: np.ndarray, state: T.GrammarState, full: bool,
    targets: Sequence[tuple[str, float]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(p_fail [B], P(byte 1) [B, 256], which byte-1 buckets to expand [B, 256]) from the log-probs at the
    Result position and after `<RttStart>`; see `result_distribution`."""
    allowed = state.allowed()
    if not (allowed[T.FAILED] and allowed[T.RTT_START]):
        raise RuntimeError("the prompt does not end right before a Result field")
    # P(failure) renormalised over the two outcomes: the grammar also allows a Timestamp field or the
    # reserved <ThroughputStart> here, which are not outcomes of a ping.
    outcome = restricted(logp_res_BxV, np.isin(np.arange(T.VOCAB_SIZE), [T.FAILED, T.RTT_START]))
    p_fail = outcome[:, T.FAILED]
    st = state.copy()
    st.advance(T.RTT_START)
    # grammar: canonical high bytes only; domain: RTTs up to 10 minutes
    p1 = restricted(logp1_BxV, st.allowed() & PLAUSIBLE)[:, T.BYTE0 :]
    p1 = np.where(p1 >= MIN_BRANCH_PROB, p1, 0.0)
    p1 /= p1.sum(axis=1, keepdims=True)
    expand = p1 > 0 if full else needed_buckets(p1, targets)
    return p_fail, p1, expand


def byte2_probs(logp2_PxV: np.ndarray) -> np.ndarray:
    """P(byte 2) [P, 256] from log-probs after a byte-1 branch."""
    return restricted(logp2_PxV, np.arange(T.VOCAB_SIZE) >= T.BYTE0)[:, T.BYTE0 :]


def result_distribution(
    logp_res_BxV: np.ndarray, logp1_BxV: np.ndarray, state: T.GrammarState,
    expand_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], full: bool,
    targets: Sequence[tuple[str, float]] = (),
) -> list[tuple[float, np.ndarray, np.ndarray]]:  # fmt: skip
    """(p_fail, codes, probs) per row, from the log-probs at the Result position and after `<RttStart>`.

    `expand_fn(rows, byte1)` gives the log-probs of byte 2 after (row, `<RttStart>`, byte 1), batched.
    With `full`, every byte-1 bucket with mass >= MIN_BRANCH_PROB is expanded (the whole distribution);
    otherwise only the buckets that can hold the requested `targets` (("q", level) quantiles and
    ("t", ms) thresholds). That is exact for those targets because each bucket's value range is known:
    a bucket wholly below or above every target enters as one atom at its lowest value.
    """
    p_fail, p1, expand = result_heads(logp_res_BxV, logp1_BxV, state, full, targets)
    row_idx, b1 = np.nonzero(expand)
    p2 = byte2_probs(expand_fn(row_idx, b1))
    bounds = np.searchsorted(row_idx, np.arange(len(p1) + 1))  # row_idx is sorted (np.nonzero order)
    out = []
    for r in range(len(p1)):
        mine = slice(bounds[r], bounds[r + 1])
        codes = (b1[mine, None].astype(np.int64) * 256 + np.arange(256)).reshape(-1)
        probs = (p1[r, b1[mine], None] * p2[mine]).reshape(-1)
        if not full:
            rest = np.flatnonzero((p1[r] > 0) & ~expand[r])
            codes = np.concatenate([codes, rest * 256 + BUCKET_LOWEST[rest]])
            probs = np.concatenate([probs, p1[r, rest]])
        keep = probs > 0
        codes, probs = codes[keep], probs[keep]
        order = np.argsort(CODE_RANK[codes], kind="stable")  # by RTT value, then code
        out.append((float(p_fail[r]), codes[order].astype(np.uint16), probs[order] / probs.sum()))
    return out


def needed_buckets(p1_Bx256: np.ndarray, targets: Sequence[tuple[str, float]]) -> np.ndarray:
    """bool[B, 256]: byte-1 buckets whose value range can contain a target quantile or threshold."""
    need = np.zeros(p1_Bx256.shape, bool)
    has = p1_Bx256 > 0
    by_lo, by_hi = np.argsort(BUCKET_LO, kind="stable"), np.argsort(BUCKET_HI, kind="stable")
    for kind, value in targets:
        if kind == "t":  # the buckets straddling the threshold
            need |= has & (BUCKET_LO <= value) & (BUCKET_HI > value)
            continue
        # The quantile lies in [v_lo, v_hi]: v_lo where the CDF's upper bound (bucket at its lowest value)
        # reaches q, v_hi where its lower bound (bucket at its highest value) does.
        i_lo = (np.cumsum(p1_Bx256[:, by_lo], axis=1) >= value - EPS).argmax(axis=1)
        i_hi = (np.cumsum(p1_Bx256[:, by_hi], axis=1) >= value - EPS).argmax(axis=1)
        v_lo, v_hi = BUCKET_LO[by_lo][i_lo][:, None], BUCKET_HI[by_hi][i_hi][:, None]
        need |= has & (BUCKET_LO <= v_hi) & (BUCKET_HI >= v_lo)
    return need

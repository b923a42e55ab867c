"""What a query returns: the RTT distribution of one ping (`RttPrediction`) and ranked destinations (the RTT
code tables they are computed over are in `rtt_codes`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pingllm_core.data import tokens as T
from pingllm_core.query.rtt_codes import discrete_quantile

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
# Edges (ms) of the coarse histogram in JSON answers: 1-2-5 steps, then everything up to the RTT maximum.
HISTOGRAM_EDGES_MS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
                      1e3, 2e3, 5e3, 1e4, 600_000.0)  # fmt: skip


def quantile_key(q: float) -> str:
    """Name of a quantile level: 0.1 -> 'p10', 0.999 -> 'p99.9'."""
    return f"p{q * 100:g}"


@dataclasses.dataclass(frozen=True)
class RttPrediction:
    """Predicted outcome of one ping: P(failure) and the RTT distribution given success."""

    src: str
    dst: str
    time: int | None  # unix s of the query, None when asked without a time
    p_fail: float  # P(<Failed>) / (P(<Failed>) + P(<RttStart>)) at the result position
    codes: np.ndarray  # uint16[k]: RTT codes with mass, sorted by RTT
    probs: np.ndarray  # float64[k]: P(code | success); sums to 1
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILES
    warnings: tuple[str, ...] = ()
    context_used: int = 0  # context measurements in the prompt
    context_dropped: int = 0  # oldest context measurements dropped to fit max_len

    @property
    def rtt_ms(self) -> np.ndarray:
        """RTT of each code, ms."""
        return T.decode_rtt_code(self.codes)

    def quantile(self, q: float) -> float:
        """RTT quantile given success, ms."""
        return discrete_quantile(self.rtt_ms, self.probs, q)

    @property
    def median(self) -> float:
        """The point prediction: median RTT given success, ms."""
        return self.quantile(0.5)

    @property
    def quantiles(self) -> dict[str, float]:
        """Quantiles at `quantile_levels`, ms, keyed 'p10', 'p50', ..."""
        return {quantile_key(q): self.quantile(q) for q in self.quantile_levels}

    @property
    def mean(self) -> float:
        """Mean RTT given success, ms."""
        return float(np.dot(self.rtt_ms, self.probs))

    def histogram(self, edges_ms: Sequence[float] = HISTOGRAM_EDGES_MS) -> np.ndarray:
        """P(edges[i] <= RTT < edges[i+1] | success) per bin; the last bin includes its upper edge."""
        edges = np.asarray(edges_ms, np.float64)
        idx = np.clip(np.searchsorted(edges, self.rtt_ms, side="right") - 1, 0, len(edges) - 2)
        return np.bincount(idx, weights=self.probs, minlength=len(edges) - 1)

    def to_dict(self, with_distribution: bool = False) -> dict:
        """JSON-ready dict: summaries and a coarse histogram; with `with_distribution`, every RTT code's
        probability too (parallel lists of rtt_ms and prob: up to tens of thousands of entries)."""
        out = {
            "src": self.src,
            "dst": self.dst,
            "time": self.time,
            "p_fail": self.p_fail,
            "median_ms": self.median,
            "mean_ms": self.mean,
            "quantiles_ms": self.quantiles,
            "context_used": self.context_used,
            "context_dropped": self.context_dropped,
            "warnings": list(self.warnings),
            "histogram": {"edges_ms": list(HISTOGRAM_EDGES_MS), "prob": self.histogram().tolist()},
        }
        if with_distribution:
            out["distribution"] = {"rtt_ms": self.rtt_ms.tolist(), "prob": self.probs.tolist()}
        return out


@dataclasses.dataclass(frozen=True)
class RankedDestination:
    """One ranked candidate: lower median (or higher P(rtt <= threshold)) ranks first."""

    dst: str
    score: float  # median ms for by="median"; P(success and rtt <= threshold) for by="p_below"
    median: float  # median RTT given success, ms
    p_fail: float

"""Query latency on this machine: one `predict` (p50 after warm-up) and `rank` of 1000 candidates.

Random-init weights (timing only). Run: `python benchmarks/query.py [--tiers tiny small] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from pingllm_core.model import Transformer, count_params, model_config  # noqa: E402
from pingllm_core.query import QueryEngine  # noqa: E402

SRC = "193.0.14.129"


def _p50(fn, repeats: int) -> float:
    """Median wall time of `fn()` in seconds, after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(tier: str, n_candidates: int, repeats: int) -> dict:
    """Time predict and rank for one tier."""
    cfg = model_config(tier)
    engine = QueryEngine(Transformer(cfg, rngs=nnx.Rngs(0)), cfg)
    rng = np.random.default_rng(0)
    cands = [".".join(map(str, row)) for row in rng.integers(1, 224, size=(n_candidates, 4))]
    pred = engine.predict(SRC, "8.8.8.8")
    return {
        "tier": tier,
        "params": count_params(engine.model),
        "predict_s": _p50(lambda: engine.predict(SRC, "8.8.8.8"), repeats),
        "support": len(pred.codes),
        "rank_s": _p50(lambda: engine.rank(SRC, cands), max(1, repeats // 2)),
        "n": len(set(cands)),
    }


def main() -> None:
    """Print the latency table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiers", nargs="+", default=["tiny", "small"])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'tier':6s} {'params':>11s} {'predict p50':>12s} {'codes':>6s} {'rank':>8s} {'cands':>6s}")
    for tier in args.tiers:
        r = bench(tier, args.candidates, args.repeats)
        print(f"{r['tier']:6s} {r['params']:>11,d} {r['predict_s'] * 1e3:>10.1f}ms {r['support']:>6d} "
              f"{r['rank_s']:>7.2f}s {r['n']:>6d}")  # fmt: skip


if __name__ == "__main__":
    main()

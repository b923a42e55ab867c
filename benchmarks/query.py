"""Query latency on this machine: one `predict` and `rank` of N candidate destinations, per model tier.

Random-init weights (timing only; the work does not depend on the weights, except that byte-2 branches
follow the predicted distribution). Two candidate lists of N distinct IPv4 addresses, both reported:
- random: uniform over 1.0.0.0-223.255.255.255 (almost no shared address bytes beyond the first);
- clustered: hosts in 300 /24 prefixes spread over 100 /16s, like a list of candidate servers (the ranking
  trie then shares the first three address bytes).
Each timing is steady state (after a first call that compiles, reported apart as `compile`), repeated:
median and [min-max]. `evals/cand` is the number of token evaluations per candidate (shared trie levels,
per-candidate tokens and RTT byte-2 branches, padding excluded). On a shared machine two columns show how
much CPU the run actually got: `cores` is process CPU time over wall time during the rank runs (about 1.7
with two free cores, 1.0 when another process holds one) and `matmul` the float32 matmul throughput
measured before and after.

Run: `python benchmarks/query.py [--tiers tiny small] [--candidates 1000] [--repeats 5]`.
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

from pingllm_core.model.transformer import Transformer, count_params, model_config  # noqa: E402
from pingllm_core.query.engine import QueryEngine  # noqa: E402

SRC = "193.0.14.129"


def random_candidates(n: int, seed: int = 0) -> list[str]:
    """n distinct uniform IPv4 addresses in 1.0.0.0-223.255.255.255."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        for row in rng.integers([1, 0, 0, 0], [224, 256, 256, 256], size=(n, 4)):
            out.setdefault(".".join(map(str, row)))
    return list(out)[:n]


def clustered_candidates(n: int, seed: int = 0, n16: int = 100, n24: int = 300) -> list[str]:
    """n distinct IPv4 hosts in `n24` /24 prefixes spread over `n16` /16s (a list of candidate servers)."""
    rng = np.random.default_rng(seed)
    p16 = rng.integers([1, 0], [224, 256], size=(n16, 2))
    p24 = np.concatenate([p16[rng.integers(0, n16, n24)], rng.integers(0, 256, (n24, 1))], 1)
    out: dict[str, None] = {}
    while len(out) < n:
        row = (*p24[rng.integers(0, n24)], rng.integers(1, 255))
        out.setdefault(".".join(map(str, row)))
    return list(out)


def _timed(fn, repeats: int, cpu: list[float] | None = None) -> tuple[float, list[float]]:
    """(first call's seconds, then `repeats` steady-state seconds); appends CPU/wall ratios to `cpu`."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append((time.process_time() - c0) / times[-1])
    return first, times


def matmul_gflops(repeats: int = 5) -> float:
    """Best float32 [1024, 320] x [320, 1024] matmul throughput, GFLOP/s (the model's typical shape)."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((1024, 320)), jnp.ones((320, 1024))
    f = jax.jit(lambda a, b: (a @ b).sum())
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready(), repeats)[1])
    return 2 * 1024 * 320 * 1024 / best / 1e9


def bench(tier: str, n_candidates: int, repeats: int) -> dict:
    """Time predict and rank (both lists) for one tier."""
    cfg = model_config(tier)
    engine = QueryEngine(Transformer(cfg, rngs=nnx.Rngs(0)), cfg)
    out = {"tier": tier, "params": count_params(engine.model), "matmul": [matmul_gflops()], "cores": []}
    first, times = _timed(lambda: engine.predict(SRC, "8.8.8.8"), repeats)
    out["predict"], out["predict_compile"] = times, first - statistics.median(times)
    for name, cands in (
        ("random", random_candidates(n_candidates)),
        ("clustered", clustered_candidates(n_candidates)),
    ):
        first, times = _timed(lambda c=cands: engine.rank(SRC, c), repeats, out["cores"])
        stats = engine.last_rank_stats
        out[name] = times
        out[f"{name}_compile"] = first - statistics.median(times)
        out[f"{name}_evals"] = stats.token_evals / stats.candidates
        out[f"{name}_depth"] = stats.depths
        out["n"] = stats.candidates
    out["matmul"].append(matmul_gflops())
    return out


def _fmt(times: list[float], unit: float, suffix: str) -> str:
    """'median [min-max]' in the given unit."""
    med, lo, hi = statistics.median(times) / unit, min(times) / unit, max(times) / unit
    digits = 0 if suffix == "ms" and med >= 10 else (1 if suffix == "ms" else 2)
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}] {suffix}"


def main() -> None:
    """Print the latency table (markdown)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiers", nargs="+", default=["tiny", "small"])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.candidates
    print(f"| tier | params | predict p50 | rank-{n} random | rank-{n} clustered | evals/cand random | "
          "evals/cand clustered | compile: predict, random, clustered | cores | matmul GFLOP/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tier in args.tiers:
        r = bench(tier, n, args.repeats)
        print(f"| {r['tier']} | {r['params']:,} | {_fmt(r['predict'], 1e-3, 'ms')} | {_fmt(r['random'], 1, 's')} | "
              f"{_fmt(r['clustered'], 1, 's')} | {r['random_evals']:.2f} (depth {r['random_depth'][0]}) | "
              f"{r['clustered_evals']:.2f} (depth {r['clustered_depth'][0]}) | "
              f"{r['predict_compile']:.1f}, {r['random_compile']:.1f}, {r['clustered_compile']:.1f} s | "
              f"{min(r['cores']):.1f}-{max(r['cores']):.1f} | {min(r['matmul']):.0f}-{max(r['matmul']):.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

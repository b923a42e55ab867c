"""Check the GPU attention paths against XLA on packed rows: logits and gradients (needs jax, flax, numpy).

python benchmarks/attention_check.py            # on a GPU: cudnn and cudnn_packed against xla

Each path runs the same model (the `base` widths, 2 layers, bf16) on rows of several contexts and trailing
padding, like the loader's batches, plus one row with more segments than the packed layout's slots (so the
masked fallback runs too). Prints ||a - b|| / ||b|| against the XLA path; bf16 lands near 1e-2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout, no install

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from pingllm_core.model.transformer import Transformer, model_config  # noqa: E402


def packed_rows(batch: int, seq: int, vocab: int, seed: int, many: int) -> dict[str, np.ndarray]:
    """Rows of 1-8 random-length contexts then padding; the last row holds `many` short contexts."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((batch, seq), np.int32)
    pos = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        n = many if b == batch - 1 else int(rng.integers(1, 9))
        used = int(rng.integers(seq // 2, seq + 1)) if b < batch - 1 else seq - 3
        cuts = np.sort(rng.choice(np.arange(1, used), n - 1, replace=False)) if n > 1 else np.array([], int)
        bounds = np.concatenate([[0], cuts, [used]])
        for i in range(n):
            seg[b, bounds[i] : bounds[i + 1]] = i + 1
            pos[b, bounds[i] : bounds[i + 1]] = np.arange(bounds[i + 1] - bounds[i])
    return {
        "tokens": rng.integers(0, vocab, (batch, seq), dtype=np.int32),
        "segment_ids": seg,
        "positions": pos,
    }


def run(impl: str, batch: dict[str, np.ndarray], max_segments: int):
    cfg = model_config("base", n_layers=2, attention_impl=impl, dropout=0.0, max_segments=max_segments)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    w = jnp.asarray(batch["segment_ids"] > 0, jnp.float32)[..., None]

    @nnx.jit
    def loss_and_grad(model, tokens, seg, pos):
        def f(model):
            logits = model(tokens, seg, pos)
            return jnp.sum(jax.nn.log_softmax(logits) * w) / 1e4, logits

        (_, logits), grads = nnx.value_and_grad(f, has_aux=True)(model)
        return logits, grads

    logits, grads = loss_and_grad(model, batch["tokens"], batch["segment_ids"], batch["positions"])
    return np.asarray(logits, np.float64), [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main() -> int:
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    batch = packed_rows(4, 1024, 267, seed=1, many=40)
    keep = np.asarray(batch["segment_ids"] > 0)[..., None]
    ref_logits, ref_grads = run("xla", batch, 64)
    worst = 0.0
    for impl, slots in (("cudnn", 64), ("cudnn_packed", 64), ("cudnn_packed", 16)):
        logits, grads = run(impl, batch, slots)
        finite = bool(np.isfinite(logits).all() and all(np.isfinite(g).all() for g in grads))
        e_logit = rel(logits * keep, ref_logits * keep)
        e_grad = max(rel(g, r) for g, r in zip(grads, ref_grads, strict=True))
        worst = max(worst, e_logit, e_grad) if finite else float("inf")
        note = "fallback for the 41-run row" if slots < 41 else "all rows packed"
        print(
            f"{impl:>13s} slots {slots:>3d}  logits {e_logit:.2e}  worst grad {e_grad:.2e}  finite {finite}  ({note})"
        )
    ok = worst < 5e-2
    print("OK" if ok else f"FAIL: worst relative error {worst:.3g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Train-step throughput and MFU on synthetic tokens (needs only jax, flax, optax, numpy).

python benchmarks/train_step.py                       # base tier, 64 x 1024, H100 bf16 peak
python benchmarks/train_step.py --tier tiny --batch 8 --steps 5   # CPU smoke run
python benchmarks/train_step.py --segments 6        # rows packed like real batches (6 contexts + padding)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout, no install

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import pingllm_core.model.transformer as model_lib  # noqa: E402
from pingllm_core.model.step import init_states, lr_schedule, make_mesh, make_train_step, make_tx, put_batch  # noqa: E402
from pingllm_core.model.transformer import TIERS, count_params, model_config, resolve_attention  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM dense bf16 peak per GPU (TFLOP/s)


def flops_per_token(n_params: int, n_layers: int, d_attn: int, seq_len: int, causal_halved: bool) -> float:
    """PaLM training FLOPs per token: 6N + 12*L*d*T, or 6N + 6*L*d*T counting only the causal half."""
    return 6 * n_params + (6 if causal_halved else 12) * n_layers * d_attn * seq_len


def synthetic_batch(batch: int, seq: int, vocab: int, segments: int) -> dict[str, np.ndarray]:
    """Random tokens in rows of `segments` equal contexts (positions restart in each; with more than one,
    the last 5% of the row is padding: segment 0, weight 0), the layout the loader's packing produces."""
    rng = np.random.default_rng(0)
    used = seq if segments == 1 else seq - seq // 20
    seg_L = np.zeros(seq, np.int32)
    seg_L[:used] = 1 + np.arange(used) * segments // used
    starts = np.searchsorted(seg_L[:used], np.arange(1, segments + 1))
    pos_L = np.zeros(seq, np.int32)
    pos_L[:used] = np.arange(used) - starts[seg_L[:used] - 1]
    return {
        "tokens": rng.integers(0, vocab, (batch, seq), dtype=np.int32),
        "segment_ids": np.broadcast_to(seg_L, (batch, seq)).copy(),
        "positions": np.broadcast_to(pos_L, (batch, seq)).copy(),
        "weights": np.broadcast_to((seg_L > 0).astype(np.float32), (batch, seq)).copy(),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print a table; returns the measured numbers."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier", default="base", choices=sorted(TIERS))
    p.add_argument("--batch", type=int, default=64, help="global batch (rows)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default: the tier's max_len)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation included)")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn", "cudnn_packed"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--dropout", type=float, default=None, help="override the tier's dropout rate")
    p.add_argument("--max-segments", type=int, default=None, help="override the packed layout's run slots")
    p.add_argument(
        "--segments",
        type=int,
        default=1,
        help="contexts packed per row (equal lengths; with more than 1, the last 5%% of each row is padding)",
    )
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="cudnn_packed without the masked fallback branch (to measure what the lax.cond costs)",
    )
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument(
        "--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="per-device peak (TFLOP/s)"
    )
    args = p.parse_args(argv)

    overrides = {"attention_impl": None if args.attention == "auto" else args.attention, "dtype": args.dtype}
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    if args.max_segments is not None:
        overrides["max_segments"] = args.max_segments
    cfg = model_config(args.tier, **overrides)
    if args.no_fallback:
        _packed = model_lib.packed_segments
        model_lib.packed_segments = lambda seg, m: _packed(seg, m)._replace(fits=None)
    seq = args.seq or cfg.max_len
    mesh = make_mesh()
    tx = make_tx(lr_schedule(3e-4, 10, 1000, 0.1), weight_decay=0.01, grad_clip=1.0, b1=0.9, b2=0.95)
    t_init = time.perf_counter()
    model_def, opt_def, model_state, opt_state = init_states(cfg, tx, 0, mesh)
    jax.block_until_ready(model_state)
    print(f"initialised in {time.perf_counter() - t_init:.1f} s; compiling the step", flush=True)
    n_params = count_params(nnx.merge(model_def, model_state))  # all Params, tied embedding once
    step_fn = make_train_step(model_def, opt_def, mesh)

    host = synthetic_batch(args.batch, seq, cfg.vocab_size, args.segments)
    batch = put_batch(host, mesh)
    states = (model_state, opt_state)
    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        states, metrics = step_fn(states, batch)
    jax.block_until_ready(metrics["loss"])
    t_compile = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(args.steps):
        states, metrics = step_fn(states, batch)
    jax.block_until_ready((states, metrics["loss"]))
    step_s = (time.perf_counter() - t0) / args.steps

    tokens_per_s = args.batch * seq / step_s
    d_attn = cfg.n_heads * cfg.d_head
    peak = args.peak_tflops * 1e12 * mesh.size
    mfu = tokens_per_s * flops_per_token(n_params, cfg.n_layers, d_attn, seq, False) / peak
    mfu_causal = tokens_per_s * flops_per_token(n_params, cfg.n_layers, d_attn, seq, True) / peak
    out = {
        "attention": resolve_attention(cfg),
        "segments": args.segments,
        "fallback": not args.no_fallback,
        "dropout": cfg.dropout,
        "device": jax.devices()[0].device_kind,
        "params": float(n_params),
        "tokens_per_s": tokens_per_s,
        "step_ms": step_s * 1e3,
        "mfu": mfu,
        "mfu_causal": mfu_causal,
        "loss": float(metrics["loss"]),
    }
    device = f"{mesh.size} x {jax.devices()[0].device_kind}"
    print(
        f"tier {args.tier}  batch {args.batch} x {seq}  attention {args.attention} ({out['attention']})  "
        f"dtype {args.dtype}  dropout {cfg.dropout:g}  segments/row {args.segments}  on {device}"
    )
    print(f"warmup {args.warmup} steps (incl. compile) {t_compile:.1f} s; timed {args.steps} steps")
    print(f"{'params':>12s} {'tokens/s':>12s} {'step ms':>10s} {'MFU':>8s} {'MFU causal':>11s} {'loss':>7s}")
    print(
        f"{n_params:>12,d} {tokens_per_s:>12,.0f} {step_s * 1e3:>10.1f} {mfu:>8.2%} {mfu_causal:>11.2%} {out['loss']:>7.3f}"
    )
    print(f"(MFU against {args.peak_tflops:g} TFLOP/s per device; PaLM formula 6N + 12LdT, causal 6N + 6LdT)")
    if args.json:
        Path(args.json).write_text(json.dumps({**vars(args), **out}, indent=1))
    return out


if __name__ == "__main__":
    main()

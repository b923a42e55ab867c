#!/usr/bin/env bash
# One GPU session's measurements for the base tier at 64 x 1024, most important first, each variant in its own
# process (a timeout or crash loses only that row). Needs jax (with CUDA), flax, optax, numpy.
#
#   OUT=/tmp/sweep bash benchmarks/gpu_sweep.sh        # results: $OUT/*.json, $OUT/sweep.log, a table at the end
#
# Variants: the attention path (cudnn_packed / cudnn with a mask / xla), rows of 1 or 6 packed contexts, dropout
# off, the unsafe_rbg PRNG for dropout bits, no fallback branch, and 16 run slots instead of 64.
# A 15-minute device lease holds the first three or four variants (each compiles the 20-layer step); set
# STEP_TIMEOUT and the call's timeout so the first ones finish.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_sweep}
PY=${PY:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# A persistent cache turns on XLA's per-fusion autotune cache too: later variants reuse the GEMM autotuning
# of earlier ones (the variants differ in attention, not in their matrix shapes).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/pingllm_jax_cache}
log() { tee -a "$OUT/sweep.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | log
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | log
$PY -c "from pingllm_core.model.transformer import model_config, resolve_attention; print('auto attention:', resolve_attention(model_config('base')))" 2>&1 | log
timeout 150 $PY benchmarks/attention_check.py 2>&1 | log

variant() {
  local name=$1
  shift
  echo "== $name: $*" | log
  timeout "$STEP_TIMEOUT" $PY benchmarks/train_step.py --tier "${TIER:-base}" --batch "${BATCH:-64}" --steps "${STEPS:-30}" --json "$OUT/$name.json" "$@" 2>&1 | log
}
variant packed6 --attention cudnn_packed --segments 6
variant mask6 --attention cudnn --segments 6
variant packed1 --attention cudnn_packed --segments 1
variant packed6_nodrop --attention cudnn_packed --segments 6 --dropout 0
JAX_DEFAULT_PRNG_IMPL=unsafe_rbg variant packed6_rbg --attention cudnn_packed --segments 6
variant packed6_nocond --attention cudnn_packed --segments 6 --no-fallback
variant xla6 --attention xla --segments 6
variant packed6_m16 --attention cudnn_packed --segments 6 --max-segments 16

$PY - "$OUT" <<'EOF' 2>&1 | log
import json, pathlib, sys
paths = sorted(pathlib.Path(sys.argv[1]).glob("*.json"), key=lambda p: p.stat().st_mtime)
rows = [dict(json.loads(p.read_text()), name=p.stem) for p in paths]
print(f"{'variant':>15s} {'attention':>13s} {'seg':>4s} {'drop':>5s} {'slots':>5s} {'tokens/s':>10s} {'step ms':>8s} {'MFU':>7s} {'causal':>7s}")
for r in rows:
    print(f"{r['name']:>15s} {r['attention']:>13s} {r['segments']:>4d} {r['dropout']:>5g} {str(r['max_segments'] or 64):>5s} "
          f"{r['tokens_per_s']:>10,.0f} {r['step_ms']:>8.1f} {r['mfu']:>7.2%} {r['mfu_causal']:>7.2%}")
EOF

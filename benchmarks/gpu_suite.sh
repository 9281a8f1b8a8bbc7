#!/usr/bin/env bash
# ILLUME+ speed suite on one H100/H200 (~7-8 min of commands). Run from the repository root:
#     bash benchmarks/gpu_suite.sh [OUT_DIR]
# Results go to OUT_DIR (default: $OUT when set, else ./gpu_out): results.json (every section's
# JSON + section statuses), log.txt, env.txt. Sections stop starting once BUDGET seconds (470)
# are spent, so the whole run stays inside 8 minutes; each has its own time limit.
#
#   gen256     generation_speed.py 256², bs 1 and 16: engine (--speculative none), engine+jacobi,
#              official-style baseline at bs 1; forward passes/image, speed-up, peak memory,
#              cache builds / graph captures (the warm-up call has another prompt length)
#   gen512     the same at 512², engine modes only (targets: none <= 2.9 s, jacobi <= 1.5 s at bs 1)
#   e2e        full_size_e2e.py: 3B LLM 512² codes (jacobi and none) -> full DualViTok 512² ->
#              full-size SDXL UNet 1024², seconds and peak memory per stage (bf16)
#   tok256     tokenizer_speed.py 256² bf16, bs 32 and 128, encode + decode
#   tokfast    tokenizer_speed.py 256² bf16, bs 32, decode vs the decode fast path
#   train      train_throughput.py at 3B shapes
#   cuda_tests the tests that skip without CUDA (pytest -m gpu; ILLUME_GOLDEN_DIR needed)
#   gen512_int8, e2e_int8_offload  --quantize int8 (needs torchao) and --offload, while time is left
#
# PREP on a machine with network, once, in the repo root (the GPU machine has torch and
# transformers but may lack the project's pure-Python dependencies and torchao):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 \
#     termcolor==3.3.0 platformdirs==4.14.9 torchao==0.18.0
# and copy the golden data beside the repo (ILLUME_GOLDEN_DIR, for the CUDA tests).
set -u
OUT=${1:-${OUT:-$PWD/gpu_out}}
mkdir -p "$OUT"
RAW=$(mktemp -d)
LOG="$OUT/log.txt"
START=$(date +%s)
BUDGET=${BUDGET:-470}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/ILLUME:$PWD/vision_tokenizer:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export ILLUME_GOLDEN_DIR=${ILLUME_GOLDEN_DIR:-$PWD/shared/reference/golden}
el() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(el) )); }
log() { echo "[$(el)s] $*" | tee -a "$LOG"; }
merge() {  # results.json = every JSON written so far + section statuses
  $PY - "$RAW" "$OUT/results.json" <<'PYEOF' >>"$LOG" 2>&1
import json, sys
from pathlib import Path
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
merged = {}
for p in sorted(raw.glob("*.json")):
    try:
        merged[p.stem] = json.loads(p.read_text())
    except ValueError as e:
        merged[p.stem] = {"unreadable": str(e)}
sections = raw / "sections.jsonl"
merged["sections"] = [json.loads(l) for l in sections.read_text().splitlines()] if sections.exists() else []
out.write_text(json.dumps(merged, indent=2))
PYEOF
}
section() {  # section NAME LIMIT CMD...   (skipped when the budget is spent; limit capped by it)
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 30 ]; then log "== $name skipped: budget spent"; return 99; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  log "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "{\"section\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$RAW/sections.jsonl"
  log "== $name rc=$rc in $(( $(date +%s) - t0 ))s"
  merge
  return $rc
}

# ---------------------------------------------------------------- environment
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY - <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
for m in ("transformers", "diffusers", "mmengine", "torchao", "triton"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", type(e).__name__)
import illume.inference, vision_tokenizer.models.dualvitok  # noqa: F401
print("project imports OK")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"
if ! grep -q "project imports OK" "$OUT/env.txt" || ! grep -q "available True" "$OUT/env.txt"; then
  log "preflight failed (see env.txt): no CUDA or project imports broken; stopping"; merge; exit 1
fi
HAS_TORCHAO=$(grep -q "^torchao MISSING" "$OUT/env.txt" && echo 0 || echo 1)

# ---------------------------------------------------------------- generation
section gen256 100 $PY benchmarks/generation_speed.py --sizes 256 --batch-sizes 1 16 \
        --official-max-batch 1 --json "$RAW/gen256.json"
section gen512 100 $PY benchmarks/generation_speed.py --sizes 512 --batch-sizes 1 16 --skip-official \
        --json "$RAW/gen512.json"
# ---------------------------------------------------------------- full size, end to end
section e2e 120 $PY benchmarks/full_size_e2e.py --sdxl-steps 20 --json "$RAW/e2e.json"
# ---------------------------------------------------------------- tokenizer and training (TRAIN's scripts)
section tok256 50 $PY benchmarks/tokenizer_speed.py --sizes 256 --dtypes bf16 --batch-sizes 32 128 \
        --ops encode decode --iters 3 --warmup 1 --json "$RAW/tok256.json"
# decode fast path next to the plain decode (its first call compiles the decoder: ~30 s)
section tokfast 80 $PY benchmarks/tokenizer_speed.py --sizes 256 --dtypes bf16 --batch-sizes 32 \
        --ops decode decode_fast --iters 3 --warmup 1 --json "$RAW/tokfast.json"
# the real recipe (ZeRO-2, full logits, ...) and the best setting, one process each
section train 150 $PY benchmarks/train_throughput.py --steps 2 --warmup 1 --json "$RAW/train.json"
# ---------------------------------------------------------------- tests that skip without CUDA
section cuda_tests 50 $PY -m pytest -q -m gpu -p no:cacheprovider tests --junitxml="$OUT/cuda_tests.xml"
# ---------------------------------------------------------------- low VRAM, while time is left
if [ "$HAS_TORCHAO" = 1 ]; then
  section gen512_int8 50 $PY benchmarks/generation_speed.py --sizes 512 --batch-sizes 1 --skip-official \
          --quantize int8 --json "$RAW/gen512_int8.json"
  [ "$(left)" -gt 60 ] && section e2e_int8_offload 60 $PY benchmarks/full_size_e2e.py --speculative jacobi \
          --quantize int8 --offload --sdxl-steps 20 --json "$RAW/e2e_int8_offload.json"
fi
merge
rm -rf "$RAW"
log "done in $(el)s"

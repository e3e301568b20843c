#!/usr/bin/env bash
# The GPU suite on a GPU machine, from the repository root:
#   bash tests/gpu/prepare.sh        # first, on a machine with the project's .venv: writes .gpu-carry/
#   bash tests/gpu/run.sh [PYTEST ARGS]
# The GPU machine needs python3 with torch (CUDA), transformers, accelerate, pyarrow, pyyaml, numpy, safetensors,
# pytest (peft, deepspeed and flash-attn are used when present); no network, no install of the project: the
# repository goes on PYTHONPATH, wheels from .gpu-carry/whl into a private folder.
# Output: $OUT/gpu-suite.log (everything printed) and $OUT/gpu-measurements.json ($OUT defaults to
# /tmp/agenttune-gpu-suite). Exit status: pytest's.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/agenttune-gpu-suite}
SITE=${GPU_SUITE_SITE:-/tmp/agenttune-gpu-site}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-suite.log"
: >"$LOG"

if [ ! -f .gpu-carry/tokenizer/tokenizer.json ]; then
  echo "run.sh: .gpu-carry/tokenizer is missing: run tests/gpu/prepare.sh first and carry .gpu-carry" | tee -a "$LOG"
  exit 2
fi
shopt -s nullglob
wheels=(.gpu-carry/whl/*.whl)
if ((${#wheels[@]})); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" 2>&1 \
    | tee -a "$LOG"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export AGENTTUNE_GPU_MEASUREMENTS="$OUT_DIR/gpu-measurements.json"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
rm -f "$AGENTTUNE_GPU_MEASUREMENTS"

{
  echo "== $(date -u +%FT%TZ) $(hostname) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$PY" - <<'EOF'
import importlib.util, os, platform
import torch, transformers
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}")
for name in ("accelerate", "peft", "bitsandbytes", "deepspeed", "flash_attn", "pytest_timeout"):
    spec = importlib.util.find_spec(name)
    print(f"{name}: {'present' if spec else 'absent'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
elif os.environ.get("AGENTTUNE_GPU_SUITE_ON_CPU") == "1":
    print("GPU: none; AGENTTUNE_GPU_SUITE_ON_CPU=1: the suite's code paths on the CPU, tiny model (no GPU result)")
else:
    print("GPU: none (torch.cuda.is_available() is False): every test will skip")
EOF
} 2>&1 | tee -a "$LOG"

timeout_args=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  timeout_args=(--timeout "${GPU_SUITE_TEST_TIMEOUT:-240}")
fi
start=$(date +%s)
"$PY" -m pytest tests/gpu -m gpu -v -s -rs -p no:cacheprovider "${timeout_args[@]}" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "== pytest exit $rc after $(($(date +%s) - start)) s; log $LOG; measurements $AGENTTUNE_GPU_MEASUREMENTS" \
  | tee -a "$LOG"
exit "$rc"

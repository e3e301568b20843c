#!/usr/bin/env bash
# Runs once after Snakemake creates envs/train-gpu.yaml (a post-deploy script). flash-attn's setup imports torch, so
# it cannot build in pip's isolated build environment. With a matching prebuilt wheel (flash-attn publishes them per
# torch / CUDA / Python version) this is a download; otherwise it compiles with nvcc (CUDA_HOME must point at a CUDA
# toolkit; MAX_JOBS bounds the compiler's memory use). A node without network access needs the wheel in a local
# index or PIP_FIND_LINKS. CPU environments never run this.
set -euo pipefail
MAX_JOBS=${MAX_JOBS:-8} pip install --no-build-isolation flash-attn==2.8.3.post2
python -c "import flash_attn; print('flash-attn', flash_attn.__version__)"

#!/usr/bin/env bash
# Runs once after Snakemake creates envs/train-gpu.yaml (a post-deploy script). flash-attn's setup imports torch, so
# it cannot build in pip's isolated build environment. With a matching prebuilt wheel (flash-attn publishes them per
# torch / CUDA / Python version) this is a download; otherwise it compiles with nvcc (CUDA_HOME must point at a CUDA
# toolkit; MAX_JOBS bounds the compiler's memory use). A node without network access needs the wheel in a local
# index or PIP_FIND_LINKS. CPU environments never run this. It also installs this project, first (a wrong working
# directory fails at once, before a long compile).
set -euo pipefail
# Snakemake runs a copy of this file (.snakemake/conda/<hash>_.post-deploy.sh) inside the activated env, in the
# directory Snakemake runs in: neither "$0" nor a relative path leads to the project. The project is the working
# directory (the project root, where the Snakefile is), or $AGENTTUNE_SRC when set (Snakemake run with --directory).
src=${AGENTTUNE_SRC:-$PWD}
if ! grep -qs '^name = "agenttune"' "$src/pyproject.toml"; then
    echo "post-deploy: $src/pyproject.toml is not the agenttune project:" \
        "run Snakemake in the project root or set AGENTTUNE_SRC" >&2
    exit 1
fi
# Editable and without dependencies: the env file lists them, and a code change needs no new env.
python -m pip install --no-deps -e "$src"
(cd / && python -c "import agenttune; print(\"agenttune from\", agenttune.__path__[0])")
MAX_JOBS=${MAX_JOBS:-8} python -m pip install --no-build-isolation flash-attn==2.8.3.post2
python -c "import flash_attn; print('flash-attn', flash_attn.__version__)"

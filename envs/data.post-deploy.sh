#!/usr/bin/env bash
# Post-deploy script of envs/data.yaml: Snakemake runs it once, after conda has created the env, to install this
# project into it.
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

#!/usr/bin/env bash
# Regenerates the rule graph shown in the README: docs/rulegraph.dot (Snakemake's --rulegraph of the default config,
# before any job has run; edges sorted, since Snakemake prints them in set order) and docs/rulegraph.svg (Graphviz;
# Debian: apt-get install graphviz). tests/test_rulegraph.py fails when the committed files are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
SNAKEMAKE="${SNAKEMAKE:-.venv/bin/snakemake}"
# A run name with no results: the graph does not depend on what has already run.
"$SNAKEMAKE" all --rulegraph --config run=rulegraph-fresh 2> >(grep -v "^Building DAG of jobs" >&2) |
    awk '/->/ { edges[n++] = $0; next } /^}/ { close_line = $0; next } { print }
         END { cmd = "sort -t\" \" -k1,1n -k3,3n"; for (i = 0; i < n; i++) print edges[i] | cmd; close(cmd); print close_line }' \
    > docs/rulegraph.dot
dot -Tsvg docs/rulegraph.dot > docs/rulegraph.svg

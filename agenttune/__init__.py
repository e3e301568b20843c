"""agenttune: raw tool-use traces -> formatted samples -> token shards -> per-epoch checkpoints -> reports.

The library behind the Snakemake pipeline. It never imports snakemake; `scripts/` are the thin bridge.
"""

__version__ = "0.1.0"

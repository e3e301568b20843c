"""The shared layer: atomic files and JSONL, manifests, run logs, rule dependencies, bounded-memory spill, config
defaults.
"""

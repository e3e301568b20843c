"""The shards manifest: the per-shard stats of a run summed per split, with what made them.

Takes: the `<split>-<k>.stats.json` files the shard jobs wrote, the tokenize config, the encoder and the plan.
Gives: `gather_manifest` -> `manifest.json` (rows, tokens and sha256 per shard, what was dropped and why, packing
efficiency, the train sample lengths) with `manifest_extra` (config and its hash, tokenizer identity, input files).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import config_hash, write_json_atomic
from agenttune.tokenize.encoder import ChatEncoder


def gather_manifest(stat_paths: Sequence[str | Path], out_path: str | Path, extra: dict) -> dict:
    """Sum the per-shard stats per split, check the accounting, write manifest.json."""
    splits: dict[str, list[dict]] = {}
    for p in stat_paths:
        st = json.loads(Path(p).read_text())
        splits.setdefault(st["split"], []).append(st)
    summary = {}
    for split, shards in sorted(splits.items()):
        shards.sort(key=lambda s: s["shard"])
        s = {key: sum(sh[key] for sh in shards) for key in
             ("rows", "samples_in", "samples_kept", "dropped", "truncated", "tokens", "trained_tokens", "slots",
              "reference_path", "special_tokens_in_content")}
        if s["samples_in"] != s["samples_kept"] + s["dropped"]:
            raise AssertionError(f"split {split}: {s['samples_in']} samples in != {s['samples_kept']} kept + "
                                 f"{s['dropped']} dropped")
        by_reason: Counter = Counter()
        lengths: Counter = Counter()
        templates: Counter = Counter()
        for sh in shards:
            by_reason.update(sh["dropped_by_reason"])
            lengths.update(sh["sample_lengths"])
            templates.update(sh["templates"])
        s["dropped_by_reason"] = dict(sorted(by_reason.items()))
        packed = any(sh["packing_efficiency"] is not None for sh in shards)
        s["packing_efficiency"] = round(s["tokens"] / s["slots"], 6) if packed and s["slots"] else None
        s["templates"] = dict(sorted(templates.items()))
        s["sample_lengths"] = dict(sorted(lengths.items(), key=lambda kv: int(kv[0])))
        s["shards"] = [{k: sh[k] for k in ("shard", "path", "rows", "samples_in", "samples_kept", "dropped",
                                           "tokens", "trained_tokens", "packing_efficiency", "sha256")}
                       for sh in shards]
        summary[split] = s
    train = summary.get("train", {})
    manifest = {**extra, "splits": summary,
                "total_tokens": train.get("tokens", 0),
                # Sample lengths: what attention costs under flash-attn varlen or the block-diagonal mask.
                "row_lengths": train.get("sample_lengths", {})}
    write_json_atomic(out_path, manifest)
    return manifest


def manifest_extra(cfg: dict, encoder: ChatEncoder, plan: dict) -> dict:
    """The identity part of the manifest: config, tokenizer, chat template, input files."""
    cfg = section_with_defaults(cfg, "tokenize")
    return {
        "stage": "tokenize",
        "max_len": cfg["max_len"],
        "overlong": cfg["overlong"],
        "packing": bool(cfg["packing"]),
        "samples_per_shard": cfg["samples_per_shard"],
        "config": cfg,
        "config_hash": config_hash(cfg),
        "tokenizer": encoder.identity(),
        "inputs": {split: {"path": p["path"], "sha256": p["sha256"], "samples": p["samples"]}
                   for split, p in plan["splits"].items()},
    }

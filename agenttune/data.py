"""Data stage: canonical traces -> split by trace -> rendered samples per split, with stats.

Takes: canonical trace JSONL files (docs/trace-schema.md).
Gives: `train.jsonl`, `val.jsonl`, `test.jsonl` (one sample per line, see agenttune.render) and `stats.json`.
Splitting happens on trace ids *before* rendering, so one trace never lands in two splits under two templates.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path

from agenttune.render import get_template
from agenttune.traces.canonical import read_jsonl

SPLITS = ("train", "val", "test")


def _unit_interval(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts (independent of process and order)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(trace_id: str, val: float, test: float, seed: int) -> str:
    u = _unit_interval("split", seed, trace_id)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def _weighted_choice(weights: dict[str, float], u: float) -> str:
    names = sorted(k for k, w in weights.items() if w > 0)
    total = sum(weights[k] for k in names)
    acc = 0.0
    for name in names:
        acc += weights[name] / total
        if u < acc:
            return name
    return names[-1]


def render_trace(trace: dict, template: str, tool_format: str) -> dict:
    messages = get_template(template).render(trace, tool_format)
    meta = trace.get("meta") or {}
    return {
        "id": f"{trace['id']}#{template}",
        "trace_id": trace["id"],
        "source": trace["source"],
        "kind": meta.get("kind") or ("tool" if any(m.get("tool_calls") for m in trace["messages"]) else "no_tool"),
        "task": meta.get("task", ""),
        "template": template,
        "tool_format": tool_format,
        "messages": messages,
    }


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def format_samples(trace_paths: list[str | Path], out_dir: str | Path, cfg: dict, seed: int) -> dict:
    """Split, render and write samples; return the stats (also written to out_dir/stats.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_cfg, fmt_cfg = cfg["split"], cfg["format"]
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    counts = {s: Counter() for s in SPLITS}
    traces_read = 0
    for path in trace_paths:
        for trace in read_jsonl(path):
            traces_read += 1
            split = assign_split(trace["id"], split_cfg["val"], split_cfg["test"], seed)
            template = _weighted_choice(fmt_cfg["templates"], _unit_interval("template", seed, trace["id"]))
            tool_format = _weighted_choice(fmt_cfg["tool_formats"], _unit_interval("tool_format", seed, trace["id"]))
            sample = render_trace(trace, template, tool_format)
            rows[split].append(sample)
            c = counts[split]
            c["samples"] += 1
            c[f"kind:{sample['kind']}"] += 1
            c[f"template:{template}"] += 1
            c[f"tool_format:{tool_format}"] += 1
            c[f"source:{sample['source']}"] += 1
    for split in SPLITS:
        _write_jsonl_atomic(out_dir / f"{split}.jsonl", rows[split])
    written = sum(c["samples"] for c in counts.values())
    assert written == traces_read, f"rendered {written} samples from {traces_read} traces"
    stats = {"traces_read": traces_read, "splits": {s: dict(sorted(counts[s].items())) for s in SPLITS}}
    return stats


def read_samples(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

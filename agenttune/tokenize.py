"""Tokenize stage: rendered samples -> token ids with labels masked to the trained assistant turns -> Parquet shards.

Takes: a split's samples JSONL and a tokenizer folder with a chat template.
Gives: Parquet shards (`input_ids`, `labels`, counts) and a manifest with row/token counts and sha256 per shard.
Labels are -100 everywhere except the text of assistant turns whose `loss` is true, plus their end-of-turn token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agenttune.data import read_samples
from agenttune.manifest import sha256_file, write_json_atomic

IGNORE_INDEX = -100

SHARD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("n_tokens", pa.int32()),
    ("n_trained", pa.int32()),
])


class SampleTooLong(Exception):
    pass


def chat_messages(sample: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]


def trained_char_spans(tokenizer, messages: list[dict], loss_flags: list[bool], full_text: str) -> list[tuple[int, int]]:
    """Character spans of the trained assistant text (content + end-of-turn token) inside `full_text`.

    Found by rendering the prefix before each assistant turn with the generation prompt: whatever the template,
    the assistant's content starts right after that prefix and ends with the tokenizer's eos text.
    """
    eos = tokenizer.eos_token
    spans = []
    for i, (msg, trained) in enumerate(zip(messages, loss_flags)):
        if msg["role"] != "assistant" or not trained:
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not full_text.startswith(prefix):
            raise ValueError("chat template is not prefix-stable; cannot locate assistant turns")
        start = len(prefix)
        end = start + len(msg["content"]) + len(eos)
        if full_text[start:end] != msg["content"] + eos:
            raise ValueError(f"assistant turn {i} not found where the chat template should have put it")
        spans.append((start, end))
    return spans


def encode_sample(tokenizer, sample: dict, max_len: int, overlong: str = "drop") -> tuple[list[int], list[int]]:
    """Token ids and labels for one sample. Raises SampleTooLong when it cannot be kept under `max_len`."""
    messages = chat_messages(sample)
    loss_flags = [bool(m.get("loss", m["role"] == "assistant")) for m in sample["messages"]]
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = trained_char_spans(tokenizer, messages, loss_flags, full_text)
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    span_idx = 0
    for j, (s, _e) in enumerate(offsets):
        while span_idx < len(spans) and s >= spans[span_idx][1]:
            span_idx += 1
        if span_idx < len(spans) and spans[span_idx][0] <= s < spans[span_idx][1]:
            labels[j] = ids[j]
    if len(ids) > max_len:
        if overlong == "drop":
            raise SampleTooLong(f"{len(ids)} tokens > max_len {max_len}")
        # Truncate at the end of the last whole trained turn that fits, so no turn is cut in half.
        keep = 0
        for _s, e in spans:
            end_tok = next((j + 1 for j in range(len(ids) - 1, -1, -1) if offsets[j][0] < e), 0)
            if end_tok <= max_len:
                keep = end_tok
        if keep == 0:
            raise SampleTooLong(f"{len(ids)} tokens > max_len {max_len} and no whole assistant turn fits")
        ids, labels = ids[:keep], labels[:keep]
    if not any(l != IGNORE_INDEX for l in labels):
        raise SampleTooLong("no trained token")
    return ids, labels


def tokenize_shard(samples_path: str | Path, tokenizer_dir: str | Path, out_path: str | Path, shard: int,
                   num_shards: int, max_len: int, overlong: str) -> dict:
    """Tokenize every `num_shards`-th sample starting at `shard`; write one Parquet file atomically."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    samples = read_samples(samples_path)
    rows = {name: [] for name in SHARD_SCHEMA.names}
    dropped = {}
    for idx in range(shard, len(samples), num_shards):
        sample = samples[idx]
        try:
            ids, labels = encode_sample(tokenizer, sample, max_len, overlong)
        except SampleTooLong as exc:
            dropped[sample["id"]] = str(exc)
            continue
        rows["id"].append(sample["id"])
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["n_tokens"].append(len(ids))
        rows["n_trained"].append(sum(1 for l in labels if l != IGNORE_INDEX))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    pq.write_table(pa.table(rows, schema=SHARD_SCHEMA), tmp, compression="zstd")
    os.replace(tmp, out_path)
    return {
        "path": out_path.name,
        "rows": len(rows["id"]),
        "tokens": sum(rows["n_tokens"]),
        "trained_tokens": sum(rows["n_trained"]),
        "samples_in": len(range(shard, len(samples), num_shards)),
        "dropped": dropped,
        "sha256": sha256_file(out_path),
    }


def write_shard_stats(path: str | Path, stats: dict) -> None:
    write_json_atomic(path, stats)


def gather_manifest(stat_paths: list[str | Path], out_path: str | Path, extra: dict) -> dict:
    splits: dict[str, list[dict]] = {}
    for p in stat_paths:
        st = json.loads(Path(p).read_text())
        splits.setdefault(st["split"], []).append(st)
    summary = {}
    for split, shards in sorted(splits.items()):
        shards.sort(key=lambda s: s["shard"])
        summary[split] = {
            "rows": sum(s["rows"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "trained_tokens": sum(s["trained_tokens"] for s in shards),
            "samples_in": sum(s["samples_in"] for s in shards),
            "dropped": sum(len(s["dropped"]) for s in shards),
            "shards": shards,
        }
        assert summary[split]["samples_in"] == summary[split]["rows"] + summary[split]["dropped"]
    manifest = {**extra, "splits": summary,
                "total_tokens": summary.get("train", {}).get("tokens", 0)}
    write_json_atomic(out_path, manifest)
    return manifest


def load_shards(paths: list[str | Path]) -> list[dict]:
    rows = []
    for p in paths:
        table = pq.read_table(p)
        rows.extend(table.select(["id", "input_ids", "labels"]).to_pylist())
    return rows

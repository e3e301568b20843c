"""Evaluation benchmarks: the items a model is asked, built once per run and benchmark, before any generation.

Takes: rendered samples (the data stage's splits), optionally a reviewed candidates file (agenttune.evaluate.candidates) and
a local copy of BFCL v3 (../shared/data/bfcl_v3 or wherever the config points).
Gives: a list of evaluation items plus stats (what went in, what was dropped and why). An item is one prompt with
what the right next step is:
    {"id", "benchmark", "origin", "sample_id", "template", "tool_format", "source", "kind", "task",
     "prompt_messages": [{"role", "content"}], "expected": {"name", "arguments"} | null, "reference": str,
     "review": "accepted" | "edited"  (candidates only),
     "bfcl": {"category", "ground_truth", "functions"}  (BFCL only),
     "tools", "render_mode"?  (family templates: prompt_messages then keep the whole OpenAI-style turns)}
`expected: null` means the right behaviour is to answer without a call (no-tool and irrelevance items).

Benchmarks:
- `heldout`: the test split. One item per assistant step that calls a tool (expected: its first call) and one per
  no-tool sample (its first answer), a seeded subset of `max_items`.
- `val`: the validation split merged with the accepted and edited candidates of a reviewed file, then
  deduplicated (same normalised query: the first one is kept, validation before candidates) and decontaminated
  against the training samples (a normalised query equal to a training query, or sharing a word n-gram with one).
- `bfcl`: BFCL v3 categories (`simple`, `multiple`, `parallel`, `parallel_multiple`, `irrelevance`), a seeded
  subset per category, each question rendered in a template and tool format drawn from the training weights
  (`format.templates` / `format.tool_formats`), i.e. in the prompt format the model was tuned on, then
  decontaminated like `val`. Items carry BFCL's ground truth and function schemas for AST scoring.
Samples in the `passthrough` template (AgentInstruct text, general chat) make no items: they have no structured
calls to compare with and no parser.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from agenttune.common.atomic import read_jsonl, write_jsonl
from agenttune.common.config import section_with_defaults
from agenttune.render import FAMILIES
from agenttune.render.samples import choose_templates, choose_tool_format, render_trace

BENCHMARKS = ("heldout", "val", "bfcl")
_LABEL = re.compile(r"^\s*(?:question|user|human)\s*:\s*", re.I)
_WORD = re.compile(r"\w+")


# --- items from samples -------------------------------------------------------------------------------------------

def items_from_sample(sample: dict, benchmark: str, origin: str) -> list[dict]:
    """One item per assistant step with a tool call, one for the first answer of a no-tool sample. A sample cut at
    user turns (its "user_turn"; agenttune.data.format.per_user_turn) gives items only for the turns after its last
    user turn: the earlier ones are its context, and items of the piece before it."""
    msgs = sample["messages"]
    first_assistant = next((j for j, m in enumerate(msgs) if m["role"] == "assistant"), None)
    family = FAMILIES.get(sample["template"])
    context_end = (max(j for j, m in enumerate(msgs) if m["role"] == "user") if "user_turn" in sample else -1)
    items = []
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant" or i < context_end:
            continue
        calls = msg.get("tool_calls") or []
        if calls:
            expected = {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}
        elif sample["kind"] == "no_tool" and i == first_assistant:
            expected = None
        else:
            continue
        items.append({
            "id": f"{sample['id']}@{i}",
            "benchmark": benchmark,
            "origin": origin,
            "sample_id": sample["id"],
            "template": sample["template"],
            "tool_format": sample["tool_format"],
            "source": sample["source"],
            "kind": sample["kind"],
            "task": sample.get("task", ""),
            "prompt_messages": [{"role": m["role"], "content": m["content"]} for m in msgs[:i]],
            "expected": expected,
            "reference": msg["content"],
        })
        if family is not None:  # the prompt is rendered in the family's format: it needs the whole turns and tools
            items[-1].update(prompt_messages=[dict(m) for m in msgs[:i]], reference=family.model_text(msg),
                             tools=sample.get("tools") or [],
                             **{k: sample[k] for k in ("render_mode",) if k in sample})
    return items


def items_from_samples(samples: list[dict], benchmark: str, origin: str, stats: Counter | None = None) -> list[dict]:
    items = []
    for sample in samples:
        if sample["template"] == "passthrough":
            if stats is not None:
                stats[f"{origin}_passthrough_samples_skipped"] += 1
            continue
        items.extend(items_from_sample(sample, benchmark, origin))
    return items


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()


def select(items: list[dict], max_items: int | None, seed: int) -> list[dict]:
    """A seeded subset (the same for every model and run), returned sorted by id."""
    items = sorted(items, key=lambda it: _rank(seed, it["id"]))
    if max_items:
        items = items[:max_items]
    return sorted(items, key=lambda it: it["id"])


# --- queries, duplicates, contamination ---------------------------------------------------------------------------

def query_text(messages: list[dict]) -> str:
    """The user's request: the user turns of a prompt before its first assistant turn, without a template's
    leading label ("Question: ")."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            break
        if m["role"] == "user":
            out.append(_LABEL.sub("", m["content"], count=1))
    return "\n".join(out)


def normal_words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.casefold()))


class TrainingQueries:
    """The training samples' queries, for contamination checks: exact (after normalisation) and word n-grams."""

    def __init__(self, train_samples: list[dict], n: int):
        self.n = n
        self.exact: set[tuple[str, ...]] = set()
        self.ngrams: set[tuple[str, ...]] = set()
        self.count = 0
        for sample in train_samples:
            words = normal_words(query_text(sample["messages"]))
            if not words:
                continue
            self.count += 1
            self.exact.add(words)
            self.ngrams.update(words[i:i + n] for i in range(len(words) - n + 1))

    def contamination(self, item: dict) -> str | None:
        words = normal_words(query_text(item["prompt_messages"]))
        if words in self.exact:
            return "same query as a training sample"
        for i in range(len(words) - self.n + 1):
            if words[i:i + self.n] in self.ngrams:
                return f"shares a {self.n}-word n-gram with a training query: {' '.join(words[i:i + self.n])!r}"
        return None


def deduplicate(items: list[dict], stats: Counter) -> list[dict]:
    """Keep the first item of each normalised (query, expected call) pair; later ones are counted per origin."""
    seen, kept = set(), []
    for item in items:
        key = (normal_words(query_text(item["prompt_messages"])),
               json.dumps(item["expected"], sort_keys=True, ensure_ascii=False))
        if key in seen:
            stats[f"{item['origin']}_duplicates_removed"] += 1
            continue
        seen.add(key)
        kept.append(item)
    return kept


def decontaminate(items: list[dict], training: TrainingQueries, stats: Counter, removed: list) -> list[dict]:
    kept = []
    for item in items:
        why = training.contamination(item)
        if why:
            stats[f"{item['origin']}_contaminated_removed"] += 1
            removed.append({"id": item["id"], "reason": why})
        else:
            kept.append(item)
    return kept


# --- rendering canonical traces the way training did --------------------------------------------------------------

def render_like_training(trace: dict, fmt_cfg: dict, seed: int, renderers) -> dict:
    """One sample of `trace` in the template and tool format the data stage would draw for it."""
    template = choose_templates(trace["id"], fmt_cfg["templates"], 1, seed)[0]
    tool_format = choose_tool_format(trace["id"], template, fmt_cfg["tool_formats"], seed)
    return render_trace(trace, template, tool_format, renderers)


def first_step_item(sample: dict, benchmark: str, origin: str) -> dict:
    items = items_from_sample(sample, benchmark, origin)
    if not items:
        raise ValueError(f"{sample['id']}: rendered without an assistant step to evaluate")
    return items[0]


# --- BFCL ---------------------------------------------------------------------------------------------------------

def bfcl_items(root: str | Path, categories: list[str], max_per_category: int | None, fmt_cfg: dict, seed: int,
               renderers, stats: Counter) -> list[dict]:
    """BFCL v3 questions of the given categories as single-step items with ground truth."""
    from agenttune.traces.canonical import TraceError
    from agenttune.traces.readers import bfcl
    from agenttune.traces.readers.common import RawError

    root = Path(root)
    items = []
    for category in categories:
        path = root / f"BFCL_v3_{category}.json"
        if not path.is_file():
            raise FileNotFoundError(f"BFCL category {category!r}: {path} does not exist")
        if category != "irrelevance" and not (root / "possible_answer" / path.name).is_file():
            raise FileNotFoundError(f"BFCL category {category!r}: no ground truth at {root / 'possible_answer' / path.name}")
        records = []
        for record in bfcl.records(path):
            if isinstance(record.data, RawError):
                raise ValueError(f"{path}:{record.line}: {record.data.reason}")
            records.append(record)
        stats[f"bfcl_{category}_read"] += len(records)
        records.sort(key=lambda r: _rank(seed, f"bfcl:{r.raw_id}"))
        if max_per_category:
            records = records[:max_per_category]
        for record in records:
            try:
                trace = bfcl.to_trace(record.data, "bfcl")
            except TraceError as exc:
                raise ValueError(f"{path}:{record.line}: {exc}") from None
            trace["id"] = record.raw_id
            if category != "irrelevance" and trace["meta"]["ground_truth"] is None:
                raise ValueError(f"{path}:{record.line}: id {record.raw_id} has no ground truth")
            item = first_step_item(render_like_training(trace, fmt_cfg, seed, renderers), "bfcl", "bfcl")
            item["task"] = f"bfcl_{category}"
            item["bfcl"] = {"category": category, "ground_truth": trace["meta"]["ground_truth"],
                            "functions": record.data["function"]}
            items.append(item)
        stats[f"bfcl_{category}_selected"] += len(records)
    return items


# --- building a benchmark -----------------------------------------------------------------------------------------

def build_items(benchmark: str, cfg: dict, seed: int, samples_path=None, train_path=None, format_cfg=None,
                renderers=None, log=print) -> tuple[list[dict], dict]:
    """Items and stats of one benchmark. `cfg` is the `evaluate` config section."""
    cfg = section_with_defaults(cfg, "evaluate")
    stats: Counter = Counter()
    removed: list[dict] = []
    ngram = cfg["decontaminate_ngram"]
    if benchmark == "heldout":
        items = items_from_samples(read_jsonl(samples_path), "heldout", "test", stats)
        stats["items_built"] = len(items)
        items = select(items, cfg.get("max_items"), seed)
        if train_path:  # the split is by trace and the data stage removes cross-split duplicates: report only
            training = TrainingQueries(read_jsonl(train_path), ngram)
            stats["overlapping_training_queries"] = sum(1 for it in items if training.contamination(it))
    elif benchmark == "val":
        from agenttune.evaluate.candidates import candidate_trace, read_candidates

        vcfg = cfg.get("val") or {}
        items = items_from_samples(read_jsonl(samples_path), "val", "val", stats)
        stats["val_items"] = len(items)
        if vcfg.get("candidates"):
            candidates = read_candidates(vcfg["candidates"])
            stats.update(f"candidates_{c['status']}" for c in candidates)
            for c in candidates:
                if c["status"] not in ("accepted", "edited"):
                    continue
                item = first_step_item(render_like_training(candidate_trace(c), format_cfg, seed, renderers),
                                       "val", "candidate")
                item["review"] = c["status"]
                items.append(item)
            stats["candidate_items"] = stats["candidates_accepted"] + stats["candidates_edited"]
        items = deduplicate(items, stats)
        ngram = vcfg["decontaminate_ngram"]
        training = TrainingQueries(read_jsonl(train_path), ngram)
        items = decontaminate(items, training, stats, removed)
        items = select(items, vcfg.get("max_items"), seed)
    elif benchmark == "bfcl":
        bcfg = cfg["bfcl"]
        items = bfcl_items(bcfg["path"], bcfg["categories"],
                           bcfg.get("max_items_per_category"), format_cfg, seed, renderers, stats)
        ngram = bcfg["decontaminate_ngram"]
        training = TrainingQueries(read_jsonl(train_path), ngram)
        items = decontaminate(items, training, stats, removed)
        items = sorted(items, key=lambda it: it["id"])
    else:
        raise KeyError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    for it in items:
        stats[f"kind:{it['kind']}"] += 1
        stats[f"template:{it['template']}"] += 1
        stats[f"origin:{it['origin']}"] += 1
    out = {"benchmark": benchmark, "items": len(items), "decontaminate_ngram": ngram,
           "counts": dict(sorted(stats.items())), "removed": removed}
    log(f"{benchmark}: {len(items)} items; " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    return items, out


def write_items(path, items: list[dict]) -> None:
    write_jsonl(path, items)

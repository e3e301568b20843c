"""Data stage: canonical traces -> leak-free splits -> rendered samples, with hard negatives at a ratio, general chat
mixed at AgentTuning's eta, cross-split duplicates removed, an n-gram contamination report, and stats.

Takes: canonical trace JSONL files (docs/trace-schema.md; normally the ingest stage's output), a role per source
("traces": agent data; "general": general chat such as Alpaca/ShareGPT; "negatives": a user file of hard
negatives, traces that must be answered without a call), the `split` and `format` config (docs/formatting.md),
a seed, and optionally the model's tokenizer (for the `tool_call` template's own tool prompt).
Gives, in out_dir: `train.jsonl`, `val.jsonl`, `test.jsonl` (one sample per line, the contract of
agenttune.render plus "negative_kind" on negatives, "general": true on mixed general chat, "eval_only" on
benchmark items) and the stats dict (the caller writes it as stats.json).

How, in three streaming passes over the input (memory holds neither the traces nor the samples, nor anything per
item: what the passes remember about each item waits on disk in a scratch folder, agenttune.common.spill, so memory
does not grow with the input):
  1. assign every trace to a split by its id (held-out tools/tasks and eval-only benchmark items go to test), so
     one trace never lands in two splits under two templates; collect the held-out query keys, the held-out
     n-grams, the tool lists per split (for mining) and upper bounds on what each split will need;
  2. drop train/val items whose query duplicates a held-out one (exact or normalised; test > val > train);
     count positives; draw a number per negative candidate; score general queries against the split's tool lists
     (BM25) keeping the hardest; then fix, per split, how many negatives of each kind and how many general
     samples to take (exact rational targets; agenttune.data.mix);
  3. render and write: each trace in `renders_per_trace` templates drawn by weight from its id, each with a tool
     format drawn independently; per-step samples if asked, one sample per user turn for templates whose render
     changes with the last user turn (mistral, qwen3: `per_user_turn`); general chat interleaved proportionally into
     train/val (never test: evaluation would make no-tool items of it); train/val traces augmented as configured
     (`format.augment`: name masking, tool-list shuffling, irrelevance copies planned in pass 2;
     agenttune.data.augment); the training text, as augmented, streamed past the held-out n-grams.
Every choice is a hash of (seed, purpose, id): the same input and config give byte-identical files.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import numpy as np

from agenttune.common.atomic import atomic_write, jsonl_line
from agenttune.common.config import section_with_defaults
from agenttune.common.spill import Batched, CodeFile, Scratch, signed64
from agenttune.data import mix
from agenttune.data.augment import check_config, irrelevant_copy, irrelevant_tools, mask_names, shuffle_tools
from agenttune.data.decontam import NgramOverlap, exact_key, normal_key, query_key_text, query_text
from agenttune.data.negatives import ToolListIndex, mined_trace
from agenttune.render import TEMPLATES, get_template, passthrough
from agenttune.render.common import turns
from agenttune.render.samples import (Renderer, choose_templates, choose_tool_format, make_renderers, render_trace,
                                      trace_kind, unit_interval)
from agenttune.traces.canonical import TraceError, validate_trace
from agenttune.traces.sources import ROLES, FormatError

SPLITS = ("train", "val", "test")
NEGATIVE_KINDS = ("user", "no_tool", "mined")
CATEGORIES = ("positive", "no_tool", "fixed", "user", "general")
DROPPED = 1 << 5
# One n-gram partition per this many bytes of input keeps each partition's join small (agenttune.data.decontam).
NGRAM_PARTITION_BYTES = 4 << 20


# --- deterministic choices ------------------------------------------------------------------------------------


def assign_split(trace_id: str, val: float, test: float, seed: int) -> str:
    u = unit_interval("split", seed, trace_id)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


# --- samples ----------------------------------------------------------------------------------------------------


def per_step(sample: dict) -> list[dict]:
    """ToolBench-style: one sample per trained assistant step, the conversation up to it as context (earlier
    assistant steps kept as context with loss false)."""
    steps = [i for i, m in enumerate(sample["messages"]) if m["role"] == "assistant" and m["loss"]]
    out = []
    for k, i in enumerate(steps):
        messages = [dict(m, loss=False) if m["role"] == "assistant" else m for m in sample["messages"][:i]]
        messages.append(sample["messages"][i])
        out.append({**sample, "id": f"{sample['id']}/step{k}", "messages": messages})
    return out


def user_turn_segments(messages: list[dict]) -> list[tuple[int, int, int]]:
    """(user turn number, start, end) for each user turn with trained assistant turns after it, before the next
    user turn: messages[start:end] is that user turn and its answers (the first one also takes what precedes it)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    starts, ends = [0] + users[1:], users[1:] + [len(messages)]
    return [(j, a, b) for j, (a, b) in enumerate(zip(starts, ends))
            if any(m["role"] == "assistant" and m["loss"] for m in messages[a:b])]


def per_user_turn(sample: dict) -> list[dict]:
    """For templates whose render changes with the last user turn (SPLIT_AT_USER_TURNS: Mistral writes the tool list
    and system text before it, Qwen3 drops the reasoning of turns before it): one sample per user turn with trained
    answers, the conversation through those answers, earlier assistant turns kept as context with loss false; so
    each trained turn is rendered in the context it is served in (that user turn is then the last one). A sample
    whose trained turns all answer its last user turn is kept as it is."""
    messages = sample["messages"]
    segments = user_turn_segments(messages)
    if len(segments) <= 1 and (not segments or segments[0][2] == len(messages)):
        return [sample]
    out = []
    for j, start, end in segments:
        cut = [dict(m, loss=False) if m["role"] == "assistant" and k < start and m["loss"] else m
               for k, m in enumerate(messages[:end])]
        out.append({**sample, "id": f"{sample['id']}/user{j}", "user_turn": j, "messages": cut})
    return out


def _splits_at_user_turns(template: str) -> bool:
    return bool(getattr(get_template(template), "SPLIT_AT_USER_TURNS", False))


def _trained_steps(trace: dict, template: str) -> int:
    steps = turns(trace, get_template(template).ONE_CALL_PER_STEP)
    return sum(1 for t in steps if t["role"] == "assistant" and t["loss"])


def _user_turn_pieces(trace: dict, template: str) -> int:
    """How many samples per_user_turn makes of the trace's render in `template` (at least one)."""
    return max(1, len(user_turn_segments(turns(trace, get_template(template).ONE_CALL_PER_STEP))))


# --- reading ----------------------------------------------------------------------------------------------------


def _read_traces(paths: list[Path], validate: bool = True) -> Iterator[tuple[int, str, int, dict]]:
    """(position over all files, file, line, trace) for each non-blank line; validated unless told otherwise
    (the later passes read what the first pass already validated)."""
    pos = 0
    for path in paths:
        with open(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    trace = json.loads(raw.decode("utf-8"))
                    if validate:
                        validate_trace(trace)
                except UnicodeDecodeError as exc:
                    raise FormatError(f"{path}:{line_no}: not valid UTF-8 ({exc.reason})") from None
                except json.JSONDecodeError as exc:
                    raise FormatError(f"{path}:{line_no}: malformed JSON: {exc.msg} (column {exc.colno})") from None
                except TraceError as exc:
                    raise FormatError(str(exc.located(str(path), line_no))) from None
                yield pos, str(path), line_no, trace
                pos += 1


# --- the stage --------------------------------------------------------------------------------------------------


class _Stage:
    """State shared by the three passes. Per-item facts are recomputed from (seed, id) in each pass."""

    def __init__(self, paths, cfg: dict, seed: int, roles: dict[str, str], renderers: dict[str, Renderer],
                 scratch: Scratch):
        self.paths, self.seed, self.roles, self.renderers = paths, seed, roles, renderers
        self.scratch, self.db = scratch, scratch.db
        self.cfg = cfg
        split_cfg, fmt = self.cfg["split"], self.cfg["format"]
        self.val, self.test = split_cfg["val"], split_cfg["test"]
        self.holdout_tools = set(split_cfg["holdout"]["tools"])
        self.holdout_tasks = set(split_cfg["holdout"]["tasks"])
        self.templates = {k: w for k, w in fmt["templates"].items() if w > 0}
        self.tool_formats = {k: w for k, w in fmt["tool_formats"].items() if w > 0}
        self.renders = min(fmt["renders_per_trace"], len(self.templates))
        self.per_step = fmt["per_step"]
        # Train/val samples of templates with SPLIT_AT_USER_TURNS cut into one per user turn (per_user_turn).
        self.user_turn_cuts = {s: Counter() for s in SPLITS}
        neg = fmt["negatives"]
        self.ratio, self.order, self.min_score = neg["ratio"], list(neg["order"]), neg["min_score"]
        self.shares = dict(neg["shares"])
        if sum(self.shares.values()) > 1:
            raise FormatError(f"format.negatives.shares add up to {sum(self.shares.values()):g}, more than 1")
        if set(self.shares) - set(self.order):
            raise FormatError(f"format.negatives.shares names {sorted(set(self.shares) - set(self.order))}, "
                              f"which format.negatives.order does not list")
        self.max_tool_lists = neg["max_tool_lists"]
        self.distractor_share, self.distractor_max = fmt["distractors"]["share"], fmt["distractors"]["max"]
        self.eta = fmt["mix"]["eta"]
        # format.augment has no default: absent, nothing is augmented and nothing about it is written.
        self.augment = fmt.get("augment")
        check_config(self.augment)
        self.mask_p = self.augment["name_masking"]["p"] if self.augment else 0.0
        self.shuffle = bool(self.augment and self.augment["shuffle_tools"])
        self.irrelevance_share = self.augment["irrelevance"]["share"] if self.augment else 0.0
        for role in roles.values():
            if role not in ROLES:
                raise FormatError(f"unknown source role {role!r} (known: {', '.join(ROLES)})")
        unknown = [t for t in self.templates if t not in TEMPLATES]
        if unknown:
            raise FormatError(f"unknown template(s) {unknown} in format.templates (known: {sorted(TEMPLATES)})")

    # Per-item facts ---------------------------------------------------------------------------------------------

    def category(self, trace: dict, where: str) -> str:
        """positive | no_tool | fixed (an eval-only no-tool benchmark item) | user | general."""
        role = self.roles.get(trace["source"], "traces")
        calls = any(m.get("tool_calls") for m in trace["messages"])
        if role in ("general", "negatives") and calls:
            raise FormatError(f"{where}: id={trace['id']}: source '{trace['source']}' has role '{role}' but this "
                              f"trace calls a tool; {role} data must answer without tools")
        if role == "general":
            if trace["tools"]:
                raise FormatError(f"{where}: id={trace['id']}: general chat must come without tools (got "
                                  f"{len(trace['tools'])}); mining pairs it with tool lists")
            return "general"
        if role == "negatives":
            return "user"
        meta = trace.get("meta") or {}
        if trace_kind(trace) == "tool":
            return "positive"
        return "fixed" if meta.get("eval_only") else "no_tool"

    def split_of(self, trace: dict, category: str) -> tuple[str, str]:
        """(split, why): "hash", "eval_only", "holdout_tool" or "holdout_task"."""
        meta = trace.get("meta") or {}
        if category != "general":
            if meta.get("eval_only"):
                return "test", "eval_only"
            called = {c["name"] for m in trace["messages"] for c in m.get("tool_calls") or []}
            if called & self.holdout_tools:
                return "test", "holdout_tool"
            if meta.get("task") in self.holdout_tasks:
                return "test", "holdout_task"
        return assign_split(trace["id"], self.val, self.test, self.seed), "hash"

    def strip_holdout(self, trace: dict, split: str) -> tuple[dict, int]:
        """Outside test, held-out tools are removed from tool lists (they are never called there)."""
        if split == "test" or not self.holdout_tools:
            return trace, 0
        kept = [t for t in trace["tools"] if t["name"] not in self.holdout_tools]
        removed = len(trace["tools"]) - len(kept)
        return ({**trace, "tools": kept}, removed) if removed else (trace, 0)

    def duplicate(self, split: str, trace: dict) -> str | None:
        """"exact" / "normalised" when a train/val item's query is also a held-out query (test wins over val)."""
        if split == "test":
            return None
        text = query_key_text(trace)
        # held.rank: 0 if a test query has this key, else 1 (val); val items are judged by test queries only.
        worst = 0 if split == "val" else 1
        for kind, key in ((0, exact_key(text)), (1, normal_key(text))):
            row = self.db.execute("SELECT rank FROM held WHERE kind = ? AND k = ?", (kind, signed64(key))).fetchone()
            if row is not None and row[0] <= worst:
                return "exact" if kind == 0 else "normalised"
        return None

    def templates_for(self, trace: dict) -> list[str]:
        if (trace.get("meta") or {}).get("passthrough"):
            return [passthrough.NAME]
        return choose_templates(trace["id"], self.templates, self.renders, self.seed)

    def sample_count(self, trace: dict, split: str, category: str) -> int:
        chosen = self.templates_for(trace)
        if self.per_step and split != "test" and category == "positive" and chosen != [passthrough.NAME]:
            return sum(_trained_steps(trace, t) for t in chosen)
        if split != "test" and category == "positive":
            return sum(_user_turn_pieces(trace, t) if _splits_at_user_turns(t) else 1 for t in chosen)
        return len(chosen)

    def with_distractors(self, trace: dict, split: str) -> tuple[dict, int]:
        """A train/val tool trace offered extra tools from another tool list of its split (a share of traces,
        chosen by hash), so that picking the right tool among several is learnt; the calls stay as they are."""
        index = self.tool_lists[split]
        if (split == "test" or not self.distractor_share or len(index) < 2
                or (trace.get("meta") or {}).get("passthrough")
                or unit_interval("distract", self.seed, trace["id"]) >= self.distractor_share):
            return trace, 0
        own = {t["name"] for t in trace["tools"]}
        start = int(unit_interval("distract-list", self.seed, trace["id"]) * len(index))
        for step in range(len(index)):  # the first list, from a hashed start, with a tool the trace lacks
            extra = [t for t in index.tools((start + step) % len(index)) if t["name"] not in own]
            if extra:
                break
        else:
            return trace, 0
        k = 1 + int(unit_interval("distract-k", self.seed, trace["id"]) * self.distractor_max)
        extra = extra[:k]
        tools = sorted(trace["tools"] + extra,
                       key=lambda t: unit_interval("distract-pos", self.seed, trace["id"], t["name"]))
        return {**trace, "tools": tools}, len(extra)

    def augmented(self, trace: dict, split: str) -> tuple[dict, dict]:
        """A train/val trace with tools (not pass-through) with its tool list shuffled and its names masked, as
        configured and drawn by hash of seed and id; and the fields that mark its samples."""
        marks: dict = {}
        if split == "test" or not trace["tools"] or (trace.get("meta") or {}).get("passthrough"):
            return trace, marks
        if self.shuffle and len(trace["tools"]) > 1:
            shuffled = shuffle_tools(trace, self.seed)
            if [t["name"] for t in shuffled["tools"]] != [t["name"] for t in trace["tools"]]:
                trace, marks["tools_shuffled"] = shuffled, True
        if self.mask_p and unit_interval("mask", self.seed, trace["id"]) < self.mask_p:
            trace, _ = mask_names(trace, self.seed)
            marks["masked_names"] = True
        return trace, marks

    def irrelevance_candidate(self, trace: dict, split: str) -> bool:
        """Whether a positive trace (holdout stripped, distractors given) is one an irrelevance copy could be made of:
        a train/val template-rendered tool trace; `irrelevant_tools` says whether a tool would be left."""
        return (bool(self.irrelevance_share) and split != "test"
                and not (trace.get("meta") or {}).get("passthrough"))

    def samples(self, trace: dict, split: str, category: str) -> list[dict]:
        out = []
        for template in self.templates_for(trace):
            if template == passthrough.NAME:
                out.append(render_trace(trace, template, passthrough.TOOL_FORMAT))
                continue
            fmt = choose_tool_format(trace["id"], template, self.tool_formats, self.seed)
            sample = render_trace(trace, template, fmt, self.renderers)
            if self.per_step and split != "test" and category == "positive":
                out.extend(per_step(sample))  # each step sample ends at its trained turn: stable as it is
            elif split != "test" and _splits_at_user_turns(template):
                pieces = per_user_turn(sample)
                if len(pieces) > 1 or pieces[0] is not sample:
                    cuts = self.user_turn_cuts[split]
                    cuts["samples_cut"] += 1
                    cuts["samples_written"] += len(pieces)
                    if category != "positive":  # the ratio and eta plans count a negative's render once
                        cuts["extra_irrelevant" if category == "irrelevant" else "extra_negatives"] += len(pieces) - 1
                out.extend(pieces)
            else:
                out.append(sample)
        return out

    @staticmethod
    def decode(code: int) -> tuple[str, str, bool]:
        return SPLITS[code & 3], CATEGORIES[code >> 2 & 7], bool(code & DROPPED)

    def select_u(self, trace_id: str) -> float:
        return unit_interval("select", self.seed, trace_id)

    def irrelevance_u(self, trace_id: str) -> float:
        return unit_interval("irrelevant", self.seed, trace_id)

    # The passes --------------------------------------------------------------------------------------------------

    def pass1(self) -> None:
        d = self.cfg["split"]["decontam"]
        size = sum(p.stat().st_size for p in self.paths)
        parts = min(1024, max(4, math.ceil(size / NGRAM_PARTITION_BYTES)))
        self.overlap = NgramOverlap(d["ngram"], d["boilerplate_docs"], self.scratch.path("ngrams"), parts)
        self.db.execute("CREATE TABLE ids (k INTEGER PRIMARY KEY)")
        self.db.execute("CREATE TABLE held (kind INTEGER, k INTEGER, rank INTEGER, PRIMARY KEY (kind, k)) WITHOUT ROWID")
        # Ids by 64-bit key; a key seen twice (INSERT OR IGNORE keeps one row) sends pass 1's end to a rescan.
        ids = Batched(self.db, "INSERT OR IGNORE INTO ids VALUES (?)")
        held = Batched(self.db, "INSERT INTO held VALUES (?, ?, ?) ON CONFLICT (kind, k) DO UPDATE SET "
                                "rank = min(rank, excluded.rank)")
        self.tool_lists = {s: ToolListIndex(self.max_tool_lists) for s in SPLITS}
        self.upper_positives = Counter()
        self.read_by_role: Counter = Counter()
        self.read_by_source: Counter = Counter()
        self.moved: Counter = Counter()
        # One byte per item carries split, category and (from pass 2) the duplicate flag to the later passes.
        self.codes = CodeFile(self.scratch.path("codes.pass1"))
        for _, path, line, trace in _read_traces(self.paths):
            where = f"{path}:{line}"
            category = self.category(trace, where)
            split, why = self.split_of(trace, category)
            self.codes.append(SPLITS.index(split) | CATEGORIES.index(category) << 2)
            self.read_by_role[self.roles.get(trace["source"], "traces")] += 1
            self.read_by_source[trace["source"]] += 1
            self.moved[why] += 1
            ids.add(signed64(exact_key(trace["id"])))
            if split in ("val", "test"):
                text = query_key_text(trace)
                rank = 0 if split == "test" else 1
                held.add(0, signed64(exact_key(text)), rank)
                held.add(1, signed64(normal_key(text)), rank)
            if split == "test":
                self.overlap.add_item(trace["id"], query_text(trace))
            if category == "positive":
                trace, _ = self.strip_holdout(trace, split)
                self.upper_positives[split] += self.sample_count(trace, split, category)
                self.tool_lists[split].add(trace["tools"])
        ids.flush()
        if self._one("SELECT count(*) FROM ids") != sum(self.read_by_role.values()):
            self._raise_duplicate_id()  # a real duplicate raises; a mere 64-bit key collision does not
        held.flush()
        self.db.execute("DROP TABLE ids")
        self.codes.close()
        self.overlap.freeze()
        for index in self.tool_lists.values():
            index.freeze()

    def _raise_duplicate_id(self) -> None:
        self.db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, at TEXT) WITHOUT ROWID")
        for _, path, line, trace in _read_traces(self.paths, validate=False):
            try:
                self.db.execute("INSERT INTO seen VALUES (?, ?)", (trace["id"], f"{path}:{line}"))
            except sqlite3.IntegrityError:
                first = self.db.execute("SELECT at FROM seen WHERE id = ?", (trace["id"],)).fetchone()[0]
                raise FormatError(f"{path}:{line}: id={trace['id']}: duplicate trace id (first at {first})") from None
        self.db.execute("DROP TABLE seen")

    def pass2(self) -> None:
        self.positives = Counter()
        self.fixed = Counter()
        self.dropped = {s: Counter() for s in SPLITS}
        # Selection numbers: negative candidates (kind 0 user, 1 no_tool) and general items; a general item that
        # scores against its split's tool lists carries its BM25 score and best list (a mined-negative candidate).
        self.db.execute("CREATE TABLE cand (split INTEGER, kind INTEGER, u REAL)")
        self.db.execute("CREATE TABLE gen (pos INTEGER PRIMARY KEY, split INTEGER, u REAL, score REAL, best INTEGER)")
        cand = Batched(self.db, "INSERT INTO cand VALUES (?, ?, ?)")
        gen = Batched(self.db, "INSERT INTO gen VALUES (?, ?, ?, ?, ?)")
        # Irrelevance copies: a selection number per positive trace that would keep a tool once its called ones
        # are removed (agenttune.data.augment); the others are counted.
        self.db.execute("CREATE TABLE irr (split INTEGER, u REAL)")
        irr = Batched(self.db, "INSERT INTO irr VALUES (?, ?)")
        self.tool_traces = Counter()
        self.no_tools_left = Counter()
        self.per_negative = max(self.renders, 1)
        mining = "mined" in self.order and self.ratio is not None
        # At most this many mined negatives can be needed per split (the old bounded hardest-first heap's size).
        self.mined_bound = {s: (math.ceil(self.upper_positives[s] / self.ratio / self.per_negative) + 1 if mining else 0)
                            for s in SPLITS}
        self.mined_scored = Counter()
        codes = CodeFile(self.scratch.path("codes.pass2"))
        for (pos, _, _, trace), code in zip(_read_traces(self.paths, validate=False), self.codes, strict=True):
            split, category, _ = self.decode(code)
            dup = self.duplicate(split, trace)
            if dup:
                self.dropped[split][f"{category}:{dup}"] += 1
                codes.append(code | DROPPED)
                continue
            codes.append(code)
            trace, _ = self.strip_holdout(trace, split)
            if category == "positive":
                self.positives[split] += self.sample_count(trace, split, category)
                if self.irrelevance_candidate(trace, split):
                    self.tool_traces[split] += 1
                    if irrelevant_tools(self.with_distractors(trace, split)[0]):
                        irr.add(SPLITS.index(split), self.irrelevance_u(trace["id"]))
                    else:
                        self.no_tools_left[split] += 1
            elif category == "fixed":
                self.fixed[split] += self.sample_count(trace, split, category)
            elif category in ("user", "no_tool"):
                cand.add(SPLITS.index(split), 0 if category == "user" else 1, self.select_u(trace["id"]))
            else:  # general
                u = self.select_u(trace["id"])
                score, best = None, None
                if mining:
                    top_score, top_list = self.tool_lists[split].best(query_text(trace))
                    if top_list >= 0 and top_score > self.min_score:
                        self.mined_scored[split] += 1
                        score, best = float(top_score), int(top_list)
                if split != "test" or score is not None:
                    gen.add(pos, SPLITS.index(split), u, score, best)
        cand.flush()
        gen.flush()
        irr.flush()
        codes.close()
        self.codes = codes
        self.plan_splits()

    def _one(self, sql: str, *params):
        return self.db.execute(sql, params).fetchone()[0]

    def _smallest(self, sql: str, params: tuple, n: int, k: int) -> float:
        """A threshold t with exactly k of the n values selected by `sql` (ordered by u) <= t; -1 when k is 0
        (agenttune.data.mix.smallest, with the values on disk)."""
        if k <= 0 or n == 0:
            return -1.0
        k = min(k, n)
        return self.db.execute(sql + " LIMIT 1 OFFSET ?", (*params, k - 1)).fetchone()[0]

    def plan_splits(self) -> None:
        self.threshold: dict[tuple[str, str], float] = {}
        self.general_threshold: dict[str, float] = {}
        self.irrelevance_threshold: dict[str, float] = {}
        self.irrelevance_plan: dict[str, dict] = {}
        self.plan: dict[str, dict] = {}
        per_negative = self.per_negative
        self.db.execute("CREATE TABLE mined (pos INTEGER PRIMARY KEY, best INTEGER, score REAL)")
        for si, split in enumerate(SPLITS):
            p, fixed = self.positives[split], self.fixed[split]
            available = {"user": self._one("SELECT count(*) FROM cand WHERE split = ? AND kind = 0", si),
                         "no_tool": self._one("SELECT count(*) FROM cand WHERE split = ? AND kind = 1", si),
                         "mined": min(self.mined_bound[split], self.mined_scored[split])}
            take = {}
            if self.ratio is None:  # no target: every user and no-tool negative, nothing mined
                take = {"user": available["user"], "no_tool": available["no_tool"], "mined": 0}
                target = None
            else:
                target = mix.negatives_target(p, self.ratio)
                # Negative traces still needed (each gives per_negative samples), rounded half up.
                need = (2 * (target - fixed) + per_negative) // (2 * per_negative) if target > fixed else 0
                for kind in NEGATIVE_KINDS:
                    take[kind] = 0
                # Kinds with a share take it first (of the traces still needed); `order` fills what is left.
                shared_need = need
                for kind in self.order:
                    if kind in self.shares:
                        take[kind] = min(need, available[kind],
                                         mix.share_of(shared_need, self.shares[kind]))
                        need -= take[kind]
                for kind in self.order:
                    extra = min(need, available[kind] - take[kind])
                    take[kind] += extra
                    need -= extra
            for ki, kind in enumerate(("user", "no_tool")):
                self.threshold[(split, kind)] = self._smallest(
                    "SELECT u FROM cand WHERE split = ? AND kind = ? ORDER BY u", (si, ki), available[kind], take[kind])
            # The hardest mined candidates first; ties in score broken by the selection number.
            hardest = "FROM gen WHERE split = ? AND score IS NOT NULL ORDER BY score DESC, u DESC LIMIT ?"
            self.db.execute(f"INSERT INTO mined SELECT pos, best, score {hardest}", (si, take["mined"]))
            top = [row[0] for row in self.db.execute(f"SELECT score {hardest}", (si, min(5, take["mined"])))]
            negatives = fixed + per_negative * (take["user"] + take["no_tool"] + take["mined"])
            # Irrelevance copies come on top of the ratio's negatives: `share` of the tool traces after
            # augmentation, at most one copy per trace (a shortfall shows as copies < target).
            copies = candidates = 0
            if self.irrelevance_share and split != "test":
                tool_traces = self.tool_traces[split]
                candidates = self._one("SELECT count(*) FROM irr WHERE split = ?", si)
                wanted_copies = mix.irrelevance_target(tool_traces, self.irrelevance_share)
                copies = min(wanted_copies, candidates)
                self.irrelevance_plan[split] = {"tool_traces": tool_traces, "target": wanted_copies,
                                                "candidates": candidates, "no_tools_left": self.no_tools_left[split],
                                                "copies": copies, "samples": copies * per_negative}
            self.irrelevance_threshold[split] = self._smallest(
                "SELECT u FROM irr WHERE split = ? ORDER BY u", (si,), candidates, copies)
            plan = {"positives": p, "negatives": negatives, "target_negatives": target,
                    "taken": {"fixed": fixed, **{k: take[k] for k in NEGATIVE_KINDS}},
                    "available": available, "hardest_scores": [round(s, 4) for s in top]}
            # General chat: train and val only, never items already used as mined negatives.
            general = 0
            if split != "test" and self.eta < 1:
                free_items = "FROM gen WHERE split = ? AND pos NOT IN (SELECT pos FROM mined)"
                free = self._one(f"SELECT count(*) {free_items}", si)
                wanted = mix.general_target(p + negatives + copies * per_negative, self.eta)
                general = min(wanted, free)
                self.general_threshold[split] = self._smallest(f"SELECT u {free_items} ORDER BY u", (si,), free, general)
                plan["general_target"] = wanted
            else:
                self.general_threshold[split] = -1.0
            plan["general"] = general
            self.plan[split] = plan

    def mined_negative(self, pos: int) -> tuple[int, float] | None:
        """(best tool list, score) if the general item at `pos` was chosen as a mined negative."""
        return self.db.execute("SELECT best, score FROM mined WHERE pos = ?", (pos,)).fetchone()

    def pass3(self, out_dir: Path, targets: dict[str, Path]) -> dict:
        counts = {s: Counter() for s in SPLITS}
        # Histograms of sample lengths (bounded by the longest sample, not by the number of samples).
        lengths = {s: (Counter(), Counter()) for s in SPLITS}
        outcome = Counter()
        augmented = {s: Counter() for s in SPLITS}  # traces masked / shuffled, irrelevance copies written
        tools_removed = 0
        test_item = -1  # the n-gram report's number of the current test trace (pass 1 added them in this order)
        files = {}
        try:
            for split in SPLITS:
                files[(split, "agent")] = open(out_dir / f".{split}.agent.tmp", "w", encoding="utf-8", newline="\n")
                files[(split, "general")] = open(out_dir / f".{split}.general.tmp", "w", encoding="utf-8", newline="\n")
            written = Counter()

            def emit(split: str, stream: str, samples: list[dict]) -> None:
                for sample in samples:
                    files[(split, stream)].write(jsonl_line(sample))
                    written[(split, stream)] += 1
                    c = counts[split]
                    c["samples"] += 1
                    c[f"kind:{sample['kind']}"] += 1
                    c[f"template:{sample['template']}"] += 1
                    c[f"tool_format:{sample['tool_format']}"] += 1
                    c[f"source:{sample['source']}"] += 1
                    if "negative_kind" in sample:
                        c[f"negative_kind:{sample['negative_kind']}"] += 1
                    if sample.get("general"):
                        c["general"] += 1
                    if sample.get("distractors"):
                        c["with_distractors"] += 1
                        c["distractor_tools"] += sample["distractors"]
                    for mark in ("masked_names", "tools_shuffled"):
                        if sample.get(mark):
                            c[mark] += 1
                    chars = sum(len(m["content"]) for m in sample["messages"])
                    trained = sum(len(m["content"]) for m in sample["messages"] if m["role"] == "assistant" and m["loss"])
                    lengths[split][0][chars] += 1
                    lengths[split][1][trained] += 1

            def augment(trace: dict, split: str) -> tuple[dict, dict]:
                trace, marks = self.augmented(trace, split)
                augmented[split]["masked_traces"] += "masked_names" in marks
                augmented[split]["shuffled_traces"] += "tools_shuffled" in marks
                return trace, marks

            for (pos, _, _, trace), code in zip(_read_traces(self.paths, validate=False), self.codes, strict=True):
                split, category, dropped = self.decode(code)
                test_item += split == "test"
                role = self.roles.get(trace["source"], "traces")
                if dropped:
                    outcome[(role, "dropped_duplicate_query")] += 1
                    continue
                trace, removed = self.strip_holdout(trace, split)
                tools_removed += removed
                if category == "general":
                    mined = self.mined_negative(pos)
                    if mined is not None:
                        best, score = mined
                        negative = mined_trace(trace, self.tool_lists[split].tools(best), score)
                        negative, marks = augment(negative, split)
                        emit(split, "agent", [dict(s, negative_kind="mined", mined_score=round(score, 6), **marks)
                                              for s in self.samples(negative, split, "no_tool")])
                        outcome[(role, "mined_negative")] += 1
                        self._seen_by(split, negative, test_item)
                    elif split != "test" and self.select_u(trace["id"]) <= self.general_threshold[split]:
                        emit(split, "general", [dict(render_trace(trace, passthrough.NAME, passthrough.TOOL_FORMAT),
                                                     general=True)])
                        outcome[(role, "mixed_general")] += 1
                        self._seen_by(split, trace, test_item)
                    else:
                        outcome[(role, "unused")] += 1
                    continue
                if category in ("user", "no_tool") and self.select_u(trace["id"]) > self.threshold[(split, category)]:
                    outcome[(role, "unused_negative")] += 1
                    continue
                distractors = 0
                irrelevant = None
                if category == "positive":
                    trace, distractors = self.with_distractors(trace, split)
                    if (self.irrelevance_candidate(trace, split)
                            and self.irrelevance_u(trace["id"]) <= self.irrelevance_threshold[split]):
                        irrelevant = irrelevant_copy(trace)  # never None: pass 2 chose among traces that keep a tool
                trace, marks = augment(trace, split)
                samples = self.samples(trace, split, category)
                meta = trace.get("meta") or {}
                extra = {"distractors": distractors} if distractors else {}
                if category != "positive":
                    extra = {"kind": "no_tool", "negative_kind": "no_tool" if category == "fixed" else category}
                if meta.get("eval_only"):
                    extra["eval_only"] = True
                emit(split, "agent", [dict(s, **extra, **marks) for s in samples])
                outcome[(role, "rendered")] += 1
                self._seen_by(split, trace, test_item)
                if irrelevant is not None:  # next to its original, in its split; seen by the contamination report
                    irrelevant, marks = augment(irrelevant, split)
                    emit(split, "agent", [dict(s, kind="no_tool", negative_kind="irrelevant", **marks)
                                          for s in self.samples(irrelevant, split, "irrelevant")])
                    augmented[split]["irrelevance_copies"] += 1
                    self._seen_by(split, irrelevant, test_item)
            for f in files.values():
                f.close()
            for split in SPLITS:
                self._merge(out_dir, split, targets[split], written[(split, "agent")], written[(split, "general")])
        finally:
            for f in files.values():
                f.close()
            for split in SPLITS:
                for stream in ("agent", "general"):
                    (out_dir / f".{split}.{stream}.tmp").unlink(missing_ok=True)
        return {"counts": counts, "lengths": lengths, "outcome": outcome, "tools_removed": tools_removed,
                "augmented": augmented}

    def _seen_by(self, split: str, trace: dict, test_item: int) -> None:
        """Training text goes past the held-out n-grams; written test items are the ones the report covers."""
        if split == "train":
            self.overlap.scan("\n".join(m["content"] for m in trace["messages"] if m["role"] in ("user", "assistant")))
        elif split == "test":
            self.overlap.select(test_item)

    @staticmethod
    def _merge(out_dir: Path, split: str, target: Path, n_agent: int, n_general: int) -> None:
        """Interleave the general chat into the agent samples in proportion, into `target` (the split file's temp)."""
        with open(out_dir / f".{split}.agent.tmp", encoding="utf-8") as a, \
                open(out_dir / f".{split}.general.tmp", encoding="utf-8") as g, \
                open(target, "w", encoding="utf-8", newline="\n") as out:
            for row in mix.interleave(a, n_agent, g, n_general):
                out.write(row)


def _percentiles(histogram: Counter) -> dict:
    """Nearest-rank percentiles of a histogram {length: count}: an actual sample's length, exact integer
    arithmetic, the same on every platform."""
    n = sum(histogram.values())
    if not n:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    values = sorted(histogram)
    counts = np.cumsum([histogram[v] for v in values])

    def rank(q: int) -> int:
        r = max(0, (q * n + 99) // 100 - 1)  # 0-based position in the sorted lengths
        return int(values[int(np.searchsorted(counts, r, side="right"))])

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": int(values[-1])}


def format_samples(trace_paths: list[str | Path], out_dir: str | Path, cfg: dict, seed: int,
                   roles: dict[str, str] | None = None, tokenizer=None, ingest_stats: dict | None = None,
                   log=print) -> dict:
    """Split, render and write samples (see the module docstring); return the stats. With `ingest_stats` (the
    ingest stage's stats of these traces) the stats carry the per-source ingest accounting too, and the number
    of traces read must equal the number ingest kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Library callers may pass only what they set: the schema's defaults fill the rest (agenttune.common.config).
    cfg = {**cfg, "split": section_with_defaults(cfg["split"], "split"),
           "format": section_with_defaults(cfg["format"], "format")}
    renderers = make_renderers(tokenizer, cfg["format"]["chat_template_tools"], log, cfg["format"]["reasoning_loss"])
    # The three split files replace earlier ones only when everything below has passed (atomic_write).
    with ExitStack() as outputs, Scratch(out_dir) as scratch:
        targets = {split: outputs.enter_context(atomic_write(out_dir / f"{split}.jsonl")) for split in SPLITS}
        stage = _Stage([Path(p) for p in trace_paths], cfg, seed, roles or {}, renderers, scratch)
        stage.pass1()
        stage.pass2()
        result = stage.pass3(out_dir, targets)
        stats = _stats(stage, result)
        if ingest_stats is not None:
            kept = ingest_stats["total"]["kept"]
            if kept != stats["traces_read"]:
                raise FormatError(f"ingest kept {kept} traces but {stats['traces_read']} were read: the traces file "
                                  "and the ingest stats do not belong together")
            stats["ingest"] = {s["name"]: {k: s[k] for k in ("format", "read", "kept", "quarantined", "deduplicated",
                                                              "quarantined_by_kind")} for s in ingest_stats["sources"]}
    return stats


def _stats(stage: _Stage, result: dict) -> dict:
    counts, outcome = result["counts"], result["outcome"]
    ratio, eta = {}, {}
    for split in SPLITS:
        plan, c = stage.plan[split], counts[split]
        p, n = plan["positives"], plan["negatives"]
        irrelevant = stage.irrelevance_plan.get(split, {}).get("samples", 0)
        # A negative's render cut at user turns counts once in the plan; its further pieces are counted apart.
        cuts = stage.user_turn_cuts[split]
        written_irrelevant = c["negative_kind:irrelevant"] - cuts["extra_irrelevant"]
        written_negatives = c["kind:no_tool"] - c["general"] - c["negative_kind:irrelevant"] - cuts["extra_negatives"]
        if c["kind:tool"] != p or written_negatives != n or written_irrelevant != irrelevant:
            raise AssertionError(f"{split}: planned {p} positives / {n} negatives / {irrelevant} irrelevance "
                                 f"copies, wrote {c['kind:tool']} / {written_negatives} / {written_irrelevant}")
        ratio[split] = {
            "positives": p, "negatives": n, "achieved": mix.fraction(p, n),
            "positives_per_negative": round(p / n, 6) if n else None,
            "target_negatives": plan["target_negatives"],
            "negatives_by_kind": plan["taken"], "candidates": plan["available"],
            "hardest_mined_scores": plan["hardest_scores"],
        }
        if split != "test":
            agent = p + n + irrelevant
            eta[split] = {"agent": agent, "general": c["general"], "general_target": plan.get("general_target", 0),
                          "achieved": mix.fraction(agent, agent + c["general"]),
                          "achieved_value": round(agent / (agent + c["general"]), 6) if agent + c["general"] else None}
    accounting = {}
    for role in ROLES:
        read = stage.read_by_role[role]
        outs = {k: v for (r, k), v in sorted(outcome.items()) if r == role}
        if read != sum(outs.values()):
            raise AssertionError(f"accounting broken for role {role}: read {read}, outcomes {outs}")
        if read:
            accounting[role] = {"read": read, **outs}
    lengths = {s: {"chars": _percentiles(result["lengths"][s][0]), "trained_chars": _percentiles(result["lengths"][s][1])}
               for s in SPLITS}
    ratio_cfg = stage.ratio
    stats = {
        "traces_read": sum(stage.read_by_role.values()),
        "read_by_source": dict(sorted(stage.read_by_source.items())),
        "accounting": accounting,
        "splits": {s: dict(sorted(counts[s].items())) for s in SPLITS},
        "ratio": {"target": None if ratio_cfg is None else f"{ratio_cfg:g}:1", "order": stage.order, **ratio},
        "eta": {"target": stage.eta, **eta},
        "split_assignment": dict(sorted(stage.moved.items())),
        "holdout": {"tools": sorted(stage.holdout_tools), "tasks": sorted(stage.holdout_tasks),
                    "tools_removed_from_train_val_lists": result["tools_removed"]},
        "dropped_duplicate_queries": {s: dict(sorted(stage.dropped[s].items())) for s in SPLITS},
        "contamination": stage.overlap.report(only_selected=True),
        "lengths": lengths,
        "tool_lists_indexed": {s: len(stage.tool_lists[s]) for s in SPLITS},
        "mining_candidates_scored": {s: stage.mined_scored[s] for s in SPLITS},
    }
    if any(_splits_at_user_turns(t) for t in stage.templates):  # only then: other configs' stats stay as they were
        stats["split_at_user_turns"] = {s: {k: stage.user_turn_cuts[s][k] for k in (
            "samples_cut", "samples_written", "extra_negatives", "extra_irrelevant")} for s in ("train", "val")}
    if stage.augment:  # only when configured: without it stats.json stays as it always was
        stats["augment"] = _augment_stats(stage, counts, result["augmented"])
    return stats


def _augment_stats(stage: _Stage, counts: dict, augmented: dict) -> dict:
    """Per train/val split: traces masked and shuffled (and their samples), irrelevance copies planned and written.
    Test is never augmented."""
    out = {"name_masking": {"p": stage.mask_p}, "shuffle_tools": {"on": stage.shuffle},
           "irrelevance": {"share": stage.irrelevance_share}}
    for split in ("train", "val"):
        a, c = augmented[split], counts[split]
        out["name_masking"][split] = {"traces": a["masked_traces"], "samples": c["masked_names"]}
        out["shuffle_tools"][split] = {"traces": a["shuffled_traces"], "samples": c["tools_shuffled"]}
        plan = stage.irrelevance_plan.get(split)
        if plan is not None:
            if a["irrelevance_copies"] != plan["copies"]:
                raise AssertionError(f"{split}: planned {plan['copies']} irrelevance copies, wrote "
                                     f"{a['irrelevance_copies']}")
            total = plan["tool_traces"] + plan["copies"]
            out["irrelevance"][split] = {**plan, "achieved_share": round(plan["copies"] / total, 6) if total else None}
    return out

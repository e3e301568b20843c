"""Hard-negative mining: general-data queries paired with the tool list whose descriptions overlap them most.

Takes: tool lists (from the tool-using traces of one split) and general-data queries (Alpaca / ShareGPT user
turns, same split).
Gives: `ToolListIndex`, a BM25 index (Robertson & Zaragoza; k1 = 1.5, b = 0.75) with one document per distinct
tool list (its tools' names, descriptions and parameter names and descriptions); `best(query)` returns the
highest-scoring list and its score. A query that shares rare words with a tool list ("weather" with
get_weather) scores high: such a query is a *hard* negative, because a model that merely pattern-matches on
words would call a tool when the right move is to answer. (agenttune.data.format takes the hardest ones first.)
`mined_trace(general_trace, tools)` builds the negative: the general conversation, now offered those tools.

Caveat: a general query can genuinely need one of the offered tools ("what is 17 * 23?" next to a calculator);
lexical scoring cannot tell. `min_score` keeps weak matches out; look at the hardest ones before training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter

import numpy as np

K1, B = 1.5, 0.75
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from get give has have how i if in into is it its me my of on or "
    "our please set should so than that the their them then there these this those to use used using was we "
    "what when where which who why will with you your e g eg".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def terms(text: str) -> list[str]:
    """Lower-case words of 2+ characters, stop words dropped; snake_case and camelCase names split into words."""
    return [w for w in _WORD.findall(_CAMEL.sub(r"\1 \2", text).lower()) if len(w) > 1 and w not in STOPWORDS]


def tool_list_text(tools: list[dict]) -> str:
    parts = []
    for t in tools:
        parts += [t["name"], t.get("description", "")]
        props = t.get("parameters", {}).get("properties", {})
        if isinstance(props, dict):
            for name, spec in props.items():
                parts.append(name)
                if isinstance(spec, dict) and isinstance(spec.get("description"), str):
                    parts.append(spec["description"])
    return " ".join(parts)


def tool_list_key(tools: list[dict]) -> str:
    return json.dumps(tools, sort_keys=True, ensure_ascii=False)


class ToolListIndex:
    """Distinct tool lists, in the order first added, up to `capacity`; BM25 over them once frozen.

    Lists are kept as compact JSON text and recognised by a 64-bit digest (a few KiB per list instead of the
    parsed dicts' ~10 KiB); their BM25 term counts are computed once, at freeze."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._json: list[str] = []
        self._keys: dict[bytes, int] = {}
        self.full = False  # True once a new list had to be turned away: memory stays bounded by capacity

    def __len__(self) -> int:
        return len(self._json)

    def tools(self, i: int) -> list[dict]:
        """The i-th tool list, as it was added."""
        return json.loads(self._json[i])

    def add(self, tools: list[dict]) -> None:
        if not tools or self.full:
            return
        key = hashlib.blake2b(tool_list_key(tools).encode("utf-8"), digest_size=8).digest()
        if key in self._keys:
            return
        if len(self._json) >= self.capacity:
            self.full = True
            return
        self._keys[key] = len(self._json)
        self._json.append(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))

    def freeze(self) -> None:
        self._keys = {}  # only needed while adding
        docs = [Counter(terms(tool_list_text(self.tools(i)))) for i in range(len(self))]
        n = len(docs)
        lengths = np.array([sum(d.values()) for d in docs], dtype=np.float64)
        avg = float(lengths.mean()) if n else 0.0
        df: Counter = Counter()
        for doc in docs:
            df.update(doc.keys())
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, doc in enumerate(docs):
            norm = K1 * (1 - B + B * lengths[i] / avg) if avg else K1
            for term, tf in sorted(doc.items()):
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                entry = postings.setdefault(term, ([], []))
                entry[0].append(i)
                entry[1].append(idf * tf * (K1 + 1) / (tf + norm))
        self._postings = {t: (np.array(ix, dtype=np.int64), np.array(w)) for t, (ix, w) in postings.items()}

    def best(self, query: str) -> tuple[float, int]:
        """(score, list index) of the best-matching tool list; (0.0, -1) when nothing overlaps."""
        if not self._json:
            return 0.0, -1
        scores = np.zeros(len(self._json))
        for term in sorted(set(terms(query))):  # fixed order: float sums are then the same on every run
            hit = self._postings.get(term)
            if hit is not None:
                scores[hit[0]] += hit[1]
        i = int(np.argmax(scores))
        return (float(scores[i]), i) if scores[i] > 0 else (0.0, -1)


def mined_trace(general: dict, tools: list[dict], score: float) -> dict:
    """The general conversation offered `tools`: the right behaviour is still to answer without a call."""
    meta = dict(general.get("meta") or {})
    meta.update({"kind": "no_tool", "mined_score": round(score, 6)})
    return {"id": general["id"], "source": general["source"], "tools": tools, "messages": general["messages"],
            "meta": meta}

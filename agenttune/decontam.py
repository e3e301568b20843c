"""Decontamination: query keys for cross-split duplicate removal, and an n-gram overlap check of evaluation
items against training text.

Takes: texts (a trace's user turns, a training sample's content).
Gives:
  - `query_key_text(trace)` / `exact_key(text)` / `normal_key(text)`: 64-bit keys of a trace's query, exact and
    after normalisation (Unicode NFKC, case folded, every run of non-alphanumerics -> one space), so
    "What's the weather in Oslo?" and "what s the weather in oslo" collide;
  - `KeySet`: a compact set of such keys (8 bytes each, numpy-sorted once frozen) for "is this train query also
    a held-out query?";
  - `NgramOverlap`: word n-grams of the held-out items, checked against streamed training text; n-grams found
    in many texts are shared phrasing (a prompt preamble, a template sentence) and are left out, so the report
    counts content overlap, not boilerplate.
Query keys are blake2b digests (the same in every process); n-gram keys are Python tuple hashes, used only
within one process (see ngram_keys).
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
import unicodedata
from array import array

import numpy as np

_NON_ALNUM = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def query_text(trace: dict) -> str:
    """All of a trace's user turns, joined (tool results and the system prompt are not user text)."""
    return "\n".join(m["content"] for m in trace["messages"] if m["role"] == "user")


def query_key_text(trace: dict) -> str:
    """The query that cross-split duplicates are judged by: the user turns before the first assistant turn, i.e.
    what the model is asked before its first answer. Two traces that open with the same request are duplicates
    even if their follow-ups differ (the first evaluation step would be the same prompt). Pass-through
    trajectories (AgentInstruct) open with a task preamble shared by a whole task, so for them it is all their
    user turns."""
    if (trace.get("meta") or {}).get("passthrough"):
        return query_text(trace)
    opening = []
    for m in trace["messages"]:
        if m["role"] == "assistant":
            break
        if m["role"] == "user":
            opening.append(m["content"])
    return "\n".join(opening)


def exact_key(text: str) -> int:
    return key64(text)


def normal_key(text: str) -> int:
    return key64(normalise(text))


class KeySet:
    """Add keys, freeze once, then test membership. 8 bytes per key (a sorted array, binary search)."""

    def __init__(self):
        self._pending = array("Q")
        self._sorted: array | None = None

    def add(self, key: int) -> None:
        if self._sorted is not None:
            raise RuntimeError("KeySet is frozen")
        self._pending.append(key)

    def freeze(self) -> "KeySet":
        unique = np.unique(np.frombuffer(self._pending, dtype=np.uint64)) if self._pending else np.zeros(0, np.uint64)
        self._sorted = array("Q", unique.tobytes())
        self._pending = array("Q")
        return self

    def __contains__(self, key: int) -> bool:
        # bisect on an array of Python-sized ints is several times faster than a numpy call per lookup.
        i = bisect_left(self._sorted, key)
        return i < len(self._sorted) and self._sorted[i] == key

    def __len__(self) -> int:
        return len(self._sorted) if self._sorted is not None else len(self._pending)


def ngram_keys(text: str, n: int) -> np.ndarray:
    """The distinct keys of the word n-grams of the normalised text (empty if it has fewer than n words).

    These keys are Python's own tuple hashes: fast, and only ever compared within one process (the report
    names items, never keys), so the per-process salt does not change any output."""
    words = normalise(text).split()
    if len(words) < n:
        return np.zeros(0, np.int64)
    keys = {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}
    return np.fromiter(sorted(keys), dtype=np.int64, count=len(keys))


class NgramOverlap:
    """Held-out items' n-grams, then training texts streamed past them; report which items share an n-gram.

    An n-gram found in more than `boilerplate_docs` texts (held-out items and training texts together) is shared
    phrasing: a task's instruction preamble, a generator's sentence pattern. It is left out, so the report
    counts overlap of content, which a real leak (a test query copied into the training data a few times) has.
    Memory: 12 bytes per held-out n-gram plus the item names; the training side is never stored."""

    def __init__(self, n: int, boilerplate_docs: int):
        self.n, self.boilerplate_docs = n, boilerplate_docs
        self._keys = array("q")
        self._owner = array("I")
        self.items: list[str] = []
        self.texts_scanned = 0
        self._index: np.ndarray | None = None

    def add_item(self, name: str, text: str) -> None:
        keys = ngram_keys(text, self.n)
        self._keys.extend(keys.tolist())
        self._owner.extend([len(self.items)] * len(keys))
        self.items.append(name)

    def freeze(self) -> None:
        keys = np.frombuffer(self._keys, dtype=np.int64) if self._keys else np.zeros(0, np.int64)
        self._owner_of = np.frombuffer(self._owner, dtype=np.uint32).copy() if self._owner else np.zeros(0, np.uint32)
        self._index, self._slot, self._held_df = np.unique(keys, return_inverse=True, return_counts=True)
        self._train_df = np.zeros(len(self._index), dtype=np.uint32)
        self._keys, self._owner = array("q"), array("I")

    def scan(self, text: str) -> None:
        """Count the held-out n-grams that occur in this training text."""
        self.texts_scanned += 1
        if not len(self._index):
            return
        keys = ngram_keys(text, self.n)
        pos = np.searchsorted(self._index, keys)
        inside = pos < len(self._index)
        pos, keys = pos[inside], keys[inside]
        self._train_df[pos[self._index[pos] == keys]] += 1  # keys are distinct, so positions are too

    def report(self, names: set[str] | None = None, examples: int = 10) -> dict:
        """Items (restricted to `names` if given) with at least one non-boilerplate n-gram seen in training."""
        boiler = (self._held_df.astype(np.int64) + self._train_df) > self.boilerplate_docs
        content = ~boiler[self._slot]
        hit = content & (self._train_df[self._slot] > 0)
        n_grams = np.bincount(self._owner_of[content], minlength=len(self.items))
        n_hit = np.bincount(self._owner_of[hit], minlength=len(self.items))
        chosen = [i for i, name in enumerate(self.items) if names is None or name in names]
        flagged = [i for i in chosen if n_hit[i] > 0]
        return {
            "ngram": self.n,
            "boilerplate_docs": self.boilerplate_docs,
            "boilerplate_ngrams_ignored": int(boiler.sum()),
            "training_texts_scanned": self.texts_scanned,
            "items": len(chosen),
            "items_with_ngrams": sum(1 for i in chosen if n_grams[i] > 0),
            "items_overlapping": len(flagged),
            "share_overlapping": round(len(flagged) / len(chosen), 6) if chosen else 0.0,
            "examples": [{"item": self.items[i], "overlapping_ngrams": int(n_hit[i]), "ngrams": int(n_grams[i])}
                         for i in sorted(flagged, key=lambda i: (-n_hit[i] / n_grams[i], self.items[i]))[:examples]],
        }

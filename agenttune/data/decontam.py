"""Decontamination: query keys for cross-split duplicate removal, and an n-gram overlap check of evaluation
items against training text.

Takes: texts (a trace's user turns, a training sample's content).
Gives:
  - `query_key_text(trace)` / `exact_key(text)` / `normal_key(text)`: 64-bit keys of a trace's query, exact and
    after normalisation (Unicode NFKC, case folded, every run of non-alphanumerics -> one space), so
    "What's the weather in Oslo?" and "what s the weather in oslo" collide;
  - `NgramOverlap`: word n-grams of the held-out items, checked against streamed training text; n-grams found
    in many texts are shared phrasing (a prompt preamble, a template sentence) and are left out, so the report
    counts content overlap, not boilerplate. Its n-grams wait in files, not in memory.
Query keys are blake2b digests (the same in every process); n-gram keys are Python tuple hashes, used only
within one process (see ngram_keys).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import unicodedata
import weakref
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

from agenttune.common.spill import Partitions

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

    Memory does not grow with the input: the held-out n-grams (key, item) and every training text's distinct
    n-gram keys go to `parts` files by key (agenttune.common.spill.Partitions); `report` joins them one partition at a
    time, then adds up per item in blocks of items, reading the item names back from a file in order. Pick
    `parts` so that one partition fits comfortably in memory (agenttune.data.format: one per 4 MiB of input)."""

    ITEM_BLOCK = 1 << 12

    def __init__(self, n: int, boilerplate_docs: int, folder: str | Path | None = None, parts: int = 4):
        self.n, self.boilerplate_docs, self.parts = n, boilerplate_docs, parts
        if folder is None:
            folder = tempfile.mkdtemp(prefix=".ngrams-")
            weakref.finalize(self, shutil.rmtree, folder, True)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._held = Partitions(self.folder, "held", parts, width=2)
        self._train = Partitions(self.folder, "train", parts)
        self._names = open(self.folder / "names", "w", encoding="utf-8")
        self._selected = array("I")
        self._selected_file = open(self.folder / "selected", "wb")
        self._last_selected = -1
        self.items = 0
        self.texts_scanned = 0
        self._frozen = False

    def add_item(self, name: str, text: str) -> int:
        """Add a held-out item; returns its number (0, 1, ...), which `select` takes."""
        if self._frozen:
            raise RuntimeError("NgramOverlap is frozen")
        keys = ngram_keys(text, self.n)
        self._held.add(keys, np.full(len(keys), self.items, dtype=np.int64))
        self._names.write(json.dumps(name, ensure_ascii=False) + "\n")
        self.items += 1
        return self.items - 1

    def freeze(self) -> None:
        self._held.close()
        self._names.close()
        self._frozen = True

    def scan(self, text: str) -> None:
        """Note the n-grams of this training text (only if there are held-out n-grams to compare with)."""
        self.texts_scanned += 1
        if self._held.records:
            self._train.add(ngram_keys(text, self.n))

    def select(self, item: int) -> None:
        """Restrict the report to selected items (e.g. those actually written); numbers must come in order."""
        if item <= self._last_selected:
            raise ValueError(f"items must be selected in increasing order ({item} after {self._last_selected})")
        self._last_selected = item
        self._selected.append(item)
        if len(self._selected) >= 1 << 14:
            self._selected_file.write(self._selected.tobytes())
            self._selected = array("I")

    def _join(self) -> int:
        """Per partition: held-out n-gram -> in how many held-out and training texts; write (item, hit) for each
        content n-gram into item blocks. Returns the number of boilerplate n-grams."""
        boiler_total = 0
        for part in range(self.parts):
            held = [chunk for chunk in self._held.read(part)]
            if not held:
                continue
            held = np.concatenate(held)
            keys, owners = held[:, 0], held[:, 1]
            index, slot, held_df = np.unique(keys, return_inverse=True, return_counts=True)
            train_df = np.zeros(len(index), dtype=np.int64)
            for chunk in self._train.read(part, chunk_records=1 << 16):
                pos = np.searchsorted(index, chunk)
                inside = pos < len(index)
                pos, chunk = pos[inside], chunk[inside]
                # Keys are distinct within a text, so a text counts once per n-gram.
                train_df += np.bincount(pos[index[pos] == chunk], minlength=len(index))
            boiler = (held_df + train_df) > self.boilerplate_docs
            boiler_total += int(boiler.sum())
            content = ~boiler[slot]
            hit = (train_df[slot] > 0) & content
            records = (owners[content] * 2 + hit[content]).astype(np.int64)
            blocks = records // 2 // self.ITEM_BLOCK
            for block in np.unique(blocks).tolist():
                with open(self.folder / f"items.{block}", "ab") as fh:
                    fh.write(records[blocks == block].tobytes())
        return boiler_total

    def _selected_items(self) -> Iterator[int]:
        with open(self.folder / "selected", "rb") as fh:
            while chunk := fh.read(1 << 16):
                yield from array("I", chunk)

    def report(self, only_selected: bool = False, examples: int = 10) -> dict:
        """Items (only the selected ones if asked) with at least one non-boilerplate n-gram seen in training."""
        if not self._frozen:
            self.freeze()
        self._train.close()
        self._selected_file.write(self._selected.tobytes())
        self._selected_file.close()
        boiler_total = self._join()
        selected = self._selected_items() if only_selected else None
        next_selected = next(selected, None) if selected is not None else None
        chosen = with_ngrams = overlapping = 0
        best: list[tuple] = []
        with open(self.folder / "names", encoding="utf-8") as names:
            for base in range(0, self.items, self.ITEM_BLOCK):
                size = min(self.ITEM_BLOCK, self.items - base)
                path = self.folder / f"items.{base // self.ITEM_BLOCK}"
                records = np.fromfile(path, dtype=np.int64) if path.exists() else np.zeros(0, np.int64)
                owner = records // 2 - base
                n_grams = np.bincount(owner, minlength=size).tolist()
                n_hit = np.bincount(owner[records % 2 == 1], minlength=size).tolist()
                for i in range(size):
                    name = json.loads(names.readline())
                    if selected is not None:
                        if next_selected != base + i:
                            continue
                        next_selected = next(selected, None)
                    chosen += 1
                    with_ngrams += n_grams[i] > 0
                    if n_hit[i]:
                        overlapping += 1
                        best.append((-n_hit[i] / n_grams[i], name, n_hit[i], n_grams[i]))
                        if len(best) > 8 * examples:  # keep the candidates for the examples bounded
                            best.sort()
                            del best[examples:]
        best.sort()
        return {
            "ngram": self.n,
            "boilerplate_docs": self.boilerplate_docs,
            "boilerplate_ngrams_ignored": boiler_total,
            "training_texts_scanned": self.texts_scanned,
            "items": chosen,
            "items_with_ngrams": with_ngrams,
            "items_overlapping": overlapping,
            "share_overlapping": round(overlapping / chosen, 6) if chosen else 0.0,
            "examples": [{"item": name, "overlapping_ngrams": hit, "ngrams": grams}
                         for _, name, hit, grams in best[:examples]],
        }

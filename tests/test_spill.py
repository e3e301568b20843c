"""The on-disk bookkeeping of the data stage (agenttune.common.spill, agenttune.data.decontam.NgramOverlap): records come
back complete and in order, the disk-backed n-gram report equals a direct in-memory computation, and the stage
leaves no scratch files behind."""

import json
import os
import random

import numpy as np
import pytest

from agenttune.data.format import FormatError, format_samples
from agenttune.data.decontam import NgramOverlap, ngram_keys
from agenttune.demo.generator import generate_traces
from agenttune.common.spill import CodeFile, Partitions


def test_partitions_keep_every_record_in_its_partition(tmp_path):
    parts = Partitions(tmp_path, "p", parts=5, width=2)
    rng = np.random.default_rng(0)
    keys = rng.integers(-2**62, 2**62, size=20_000)
    values = np.arange(len(keys))
    for lo in range(0, len(keys), 777):  # many small appends, as a stream would make them
        parts.add(keys[lo:lo + 777], values[lo:lo + 777])
    parts.close()
    seen = []
    for part in range(5):
        rows = np.concatenate(list(parts.read(part, chunk_records=1000)) or [np.zeros((0, 2), np.int64)])
        assert (np.mod(rows[:, 0], 5) == part).all()
        assert (np.diff(rows[:, 1]) > 0).all()  # arrival order kept within a partition
        seen.append(rows)
    rows = np.concatenate(seen)
    assert parts.records == len(keys) and sorted(rows[:, 1].tolist()) == values.tolist()
    assert dict(zip(rows[:, 1].tolist(), rows[:, 0].tolist())) == dict(zip(values.tolist(), keys.tolist()))


def test_code_file_round_trip(tmp_path):
    codes = CodeFile(tmp_path / "c")
    data = [random.Random(1).randrange(256) for _ in range(200_000)]
    for c in data:
        codes.append(c)
    codes.close()
    assert list(codes) == data and list(codes) == data  # readable more than once


def _reference(items, texts, n, boiler, selected, examples=10):
    """The overlap report computed directly in memory."""
    held = [set(ngram_keys(t, n).tolist()) for _, t in items]
    train = [set(ngram_keys(t, n).tolist()) for t in texts]
    df = {}
    for keys in held + train:
        for k in keys:
            df[k] = df.get(k, 0) + 1
    in_train = set().union(*train) if train else set()
    rows = []
    for i, (name, _) in enumerate(items):
        if i not in selected:
            continue
        content = [k for k in held[i] if df[k] <= boiler]
        hits = [k for k in content if k in in_train]
        rows.append((name, len(content), len(hits)))
    flagged = [r for r in rows if r[2]]
    flagged.sort(key=lambda r: (-r[2] / r[1], r[0]))
    return {"items": len(rows), "items_with_ngrams": sum(1 for r in rows if r[1]), "items_overlapping": len(flagged),
            "examples": [{"item": r[0], "overlapping_ngrams": r[2], "ngrams": r[1]} for r in flagged[:examples]],
            "boilerplate_ngrams_ignored": sum(1 for k in set().union(*held) if df[k] > boiler)}


def test_disk_overlap_report_equals_direct_computation(tmp_path, monkeypatch):
    monkeypatch.setattr(NgramOverlap, "ITEM_BLOCK", 7)  # many item blocks
    rng = random.Random(3)
    words = [f"w{i}" for i in range(40)]
    items = [(f"item-{i:03d}", " ".join(rng.choice(words) for _ in range(rng.randrange(2, 14)))) for i in range(60)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 30))) for _ in range(80)]
    texts += [items[5][1], items[5][1] + " tail", items[17][1]]  # real leaks
    selected = {i for i in range(60) if i % 3}
    overlap = NgramOverlap(n=3, boilerplate_docs=4, folder=tmp_path / "ng", parts=6)
    assert [overlap.add_item(name, text) for name, text in items] == list(range(60))
    overlap.freeze()
    for t in texts:
        overlap.scan(t)
    for i in sorted(selected):
        overlap.select(i)
    got = overlap.report(only_selected=True)
    want = _reference(items, texts, 3, 4, selected)
    assert {k: got[k] for k in want} == want
    assert got["training_texts_scanned"] == len(texts) and got["items_overlapping"] > 0
    with pytest.raises(ValueError, match="increasing order"):
        fresh = NgramOverlap(n=3, boilerplate_docs=4, folder=tmp_path / "ng2")
        fresh.select(2)
        fresh.select(1)


def _write(path, traces):
    path.write_text("".join(json.dumps(t) + "\n" for t in traces))


CFG = {"split": {"val": 0.1, "test": 0.2},
       "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1}, "negatives": {"ratio": 4}}}


def test_stage_leaves_no_scratch_files(tmp_path):
    src = tmp_path / "t.jsonl"
    _write(src, generate_traces(40, seed=1, no_tool_share=0.2))
    format_samples([src], tmp_path / "out", CFG, seed=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    traces = generate_traces(40, seed=1, no_tool_share=0.2)
    _write(src, traces + [traces[3]])
    with pytest.raises(FormatError, match="duplicate trace id"):
        format_samples([src], tmp_path / "bad", CFG, seed=1)
    assert list((tmp_path / "bad").iterdir()) == []


def test_duplicate_id_found_across_insert_batches(tmp_path):
    """Ids are checked in batches of thousands on disk; a duplicate far from its first use is still named."""
    traces = generate_traces(5000, seed=1, no_tool_share=0.2)
    src = tmp_path / "t.jsonl"
    _write(src, traces + [traces[10]])
    with pytest.raises(FormatError, match=r"t.jsonl:5001: id=%s: duplicate trace id \(first at .*t.jsonl:11\)"
                       % traces[10]["id"]):
        format_samples([src], tmp_path / "out", CFG, seed=1)


def test_scratch_removes_a_dead_process_leftovers(tmp_path):
    import subprocess
    import sys

    from agenttune.common.spill import Scratch

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".scratch-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "state.sqlite").write_text("x")
    live = tmp_path / f".scratch-{os.getpid()}-def"  # this process: alive, kept
    live.mkdir()
    with Scratch(tmp_path) as scratch:
        assert scratch.dir.exists() and not stale.exists() and live.exists()
    assert not scratch.dir.exists()

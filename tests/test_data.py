import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from agenttune.evaluate.items import items_from_samples
from agenttune.common.atomic import read_jsonl
from agenttune.data.format import SPLITS, FormatError, assign_split, format_samples
from agenttune.data.decontam import normal_key, query_key_text
from agenttune.demo.generator import generate_traces
from agenttune.render import get_template, parse
from agenttune.render.samples import render_trace
from agenttune.traces.ingest import SourceSpec, ingest

from test_canonical import GOOD


def _traces(n):
    out = []
    for i in range(n):
        t = json.loads(json.dumps(GOOD))
        t["id"] = f"t{i:04d}"
        t["messages"][0]["content"] = f"Weather in city {i}?"
        out.append(t)
    return out


def test_split_is_by_trace_and_stable():
    ids = [f"x{i}" for i in range(2000)]
    a = [assign_split(i, 0.1, 0.2, seed=3) for i in ids]
    assert a == [assign_split(i, 0.1, 0.2, seed=3) for i in ids]
    assert abs(a.count("test") / 2000 - 0.2) < 0.03 and abs(a.count("val") / 2000 - 0.1) < 0.03
    assert a != [assign_split(i, 0.1, 0.2, seed=4) for i in ids]


def test_no_trace_in_two_splits_and_byte_identical(tmp_path):
    src = tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(t) + "\n" for t in _traces(300)))
    cfg = {"split": {"val": 0.1, "test": 0.2}, "format": {"templates": {"react": 1.0},
                                                        "tool_formats": {"react_list": 1, "json_schema": 1}}}
    stats = format_samples([src], tmp_path / "a", cfg, seed=1)
    format_samples([src], tmp_path / "b", cfg, seed=1)
    seen = {}
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        for s in read_jsonl(tmp_path / "a" / f"{split}.jsonl"):
            assert seen.setdefault(s["trace_id"], split) == split
    assert len(seen) == 300 == stats["traces_read"]
    assert sum(c["samples"] for c in stats["splits"].values()) == 300


def test_react_render_round_trips_through_the_parser():
    sample = render_trace(GOOD, "react", "json_schema")
    assistant = [m for m in sample["messages"] if m["role"] == "assistant"]
    call = parse("react", assistant[0]["content"])
    assert call.status == "call" and call.calls[0].name == "get_weather" and call.calls[0].arguments == {"city": "Oslo"}
    final = parse("react", assistant[1]["content"])
    assert final.status == "answer" and final.final_answer == "4 C in Oslo."
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert sample["messages"][3]["content"].startswith("Observation: ") and not sample["messages"][3]["loss"]


# --- the full stage ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ALL_TEMPLATES = {"react": 2, "openai_json": 1, "autogpt": 1, "tool_call": 1}
ALL_FORMATS = {"react_list": 1, "json_schema": 1, "autogpt": 1}


def _write(path, traces):
    path.write_text("".join(json.dumps(t) + "\n" for t in traces), encoding="utf-8")
    return path


def _general(n):
    return [{"id": f"g{i}", "source": "chat", "tools": [], "meta": {"kind": "no_tool"},
             "messages": [{"role": "user", "content": f"Tell me about the weather of planet {i}."},
                          {"role": "assistant", "content": f"Planet {i} is cold."}]} for i in range(n)]


def _full_cfg(**fmt):
    return {"split": {"val": 0.1, "test": 0.2, "holdout": {"tools": ["translate"], "tasks": []}},
            "format": {"templates": ALL_TEMPLATES, "tool_formats": ALL_FORMATS, "renders_per_trace": 2,
                       "mix": {"eta": 0.5}, **fmt}}


def _all(out):
    return {s: read_jsonl(Path(out) / f"{s}.jsonl") for s in SPLITS}


def test_the_library_fills_the_schema_defaults_of_what_a_caller_leaves_out(tmp_path):
    """A library caller may pass only what it sets; format_samples fills the rest from config/schema.yaml, as the
    Snakefile does (agenttune.common.config): the same samples either way."""
    from agenttune.common.config import section_with_defaults

    src = _write(tmp_path / "t.jsonl", generate_traces(120, seed=4))
    sparse = {"split": {"val": 0.1, "test": 0.2}, "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1}}}
    full = {k: section_with_defaults(v, k) for k, v in sparse.items()}
    assert full["format"]["negatives"]["ratio"] == 4 and full["split"]["decontam"]["ngram"] == 8
    format_samples([src], tmp_path / "sparse", sparse, seed=2)
    format_samples([src], tmp_path / "full", full, seed=2)
    for split in SPLITS:
        assert (tmp_path / "sparse" / f"{split}.jsonl").read_bytes() == (tmp_path / "full" / f"{split}.jsonl").read_bytes()


def test_several_templates_per_trace_stay_in_one_split(tmp_path):
    src = _write(tmp_path / "t.jsonl", generate_traces(300, seed=4))
    format_samples([src], tmp_path / "out", _full_cfg(), seed=2)
    where, templates = {}, {}
    for split, samples in _all(tmp_path / "out").items():
        for s in samples:
            assert where.setdefault(s["trace_id"], split) == split
            templates.setdefault(s["trace_id"], []).append(s["template"])
    assert all(len(t) == 2 and len(set(t)) == 2 for t in templates.values())
    counts = Counter(t for ts in templates.values() for t in ts)
    # react has twice the weight of each other template: drawn first more often, so most frequent.
    assert counts.most_common(1)[0][0] == "react" and len(counts) == 4


def test_byte_identical_rerun_with_every_feature_on(tmp_path):
    src = _write(tmp_path / "t.jsonl", generate_traces(250, seed=4))
    general = _write(tmp_path / "g.jsonl", _general(900))
    cfg = _full_cfg(per_step=True, negatives={"order": ["mined", "no_tool"]})
    roles = {"chat": "general"}
    a = format_samples([src, general], tmp_path / "a", cfg, seed=5, roles=roles)
    b = format_samples([src, general], tmp_path / "b", copy.deepcopy(cfg), seed=5, roles=roles)
    assert a == b
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    c = format_samples([src, general], tmp_path / "c", cfg, seed=6, roles=roles)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    assert a["splits"]["train"]["negative_kind:mined"] > 0 and a["splits"]["train"]["general"] > 0 and c


def test_cross_split_duplicate_queries_are_removed(tmp_path):
    base = generate_traces(200, seed=8)
    variants = []
    for i, t in enumerate(base[:120]):
        v = json.loads(json.dumps(t))
        v["id"] = f"copy-{i}"
        user = next(m for m in v["messages"] if m["role"] == "user")
        # Half exact copies, half normalised variants (case and punctuation).
        user["content"] = user["content"] if i % 2 else user["content"].upper().replace("?", " ?!")
        variants.append(v)
    src = _write(tmp_path / "t.jsonl", base + variants)
    stats = format_samples([src], tmp_path / "out", {"split": {"val": 0.15, "test": 0.25},
                                                     "format": {"templates": {"react": 1},
                                                                "tool_formats": {"react_list": 1}}}, seed=1)
    samples = _all(tmp_path / "out")
    keys = {s: {normal_key(query_key_text(_as_trace(x))) for x in samples[s]} for s in SPLITS}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    dropped = stats["dropped_duplicate_queries"]
    kinds = Counter(k.split(":")[1] for split in ("train", "val") for k, n in dropped[split].items() for _ in range(n))
    assert kinds["exact"] > 0 and kinds["normalised"] > 0
    assert stats["accounting"]["traces"]["dropped_duplicate_query"] == sum(kinds.values())
    assert dropped["test"] == {}


def _as_trace(sample):
    """The user turns of a react sample as a canonical-looking trace, for query keys (strips "Question: ")."""
    messages = [{"role": m["role"], "content": m["content"].removeprefix("Question: ")}
                for m in sample["messages"] if m["role"] in ("user", "assistant")]
    return {"messages": messages, "meta": {}}


def test_holdout_tool_and_task(tmp_path):
    traces = generate_traces(300, seed=9)
    src = _write(tmp_path / "t.jsonl", traces)
    cfg = {"split": {"val": 0.1, "test": 0.1, "holdout": {"tools": ["translate"], "tasks": ["github_api"]}},
           "format": {"templates": {"react": 1}, "tool_formats": {"json_schema": 1}}}
    stats = format_samples([src], tmp_path / "out", cfg, seed=1)
    samples = _all(tmp_path / "out")
    by_id = {t["id"]: t for t in traces}
    for split, rows in samples.items():
        for s in rows:
            t = by_id[s["trace_id"]]
            called = {c["name"] for m in t["messages"] for c in m.get("tool_calls") or []}
            if "translate" in called or t["meta"].get("task") == "github_api":
                assert split == "test"
            if split != "test":
                assert '"name": "translate"' not in s["messages"][0]["content"]
    assert stats["split_assignment"]["holdout_tool"] > 0 and stats["split_assignment"]["holdout_task"] > 0
    assert stats["holdout"]["tools_removed_from_train_val_lists"] > 0


def test_per_step_samples(tmp_path):
    src = _write(tmp_path / "t.jsonl", generate_traces(200, seed=10))
    cfg = {"split": {"val": 0.1, "test": 0.2},
           "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1}, "per_step": True}}
    stats = format_samples([src], tmp_path / "out", cfg, seed=1)
    samples = _all(tmp_path / "out")
    for s in samples["train"] + samples["val"]:
        trained = [m for m in s["messages"] if m["role"] == "assistant" and m["loss"]]
        assert len(trained) == 1 and s["messages"][-1] == trained[0]
        if s["kind"] == "tool":
            assert "/step" in s["id"]
    multi = [s for s in samples["train"] if s["id"].endswith("/step2")]
    assert multi and all(len([m for m in s["messages"] if m["role"] == "assistant"]) == 3 for s in multi)
    assert not [s for s in samples["test"] if "/step" in s["id"]]
    assert stats["ratio"]["train"]["positives"] == sum(1 for s in samples["train"] if s["kind"] == "tool")


def test_contamination_report_flags_a_planted_leak(tmp_path):
    traces = generate_traces(200, seed=12)
    cfg = {"split": {"val": 0.0, "test": 0.3}, "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1}}}
    test_ids = [t["id"] for t in traces if assign_split(t["id"], 0.0, 0.3, 1) == "test"]
    victim = next(t for t in traces if t["id"] == test_ids[0])
    victim["messages"][0]["content"] = "Please find the opening hours of the old lighthouse museum in Bergen harbour."
    leak = next(t for t in traces if assign_split(t["id"], 0.0, 0.3, 1) == "train" and t["meta"]["kind"] == "tool")
    leak["messages"][-1]["content"] += " By the way: find the opening hours of the old lighthouse museum in Bergen."
    src = _write(tmp_path / "t.jsonl", traces)
    report = format_samples([src], tmp_path / "out", cfg, seed=1)["contamination"]
    flagged = {e["item"] for e in report["examples"]}
    assert victim["id"] in flagged
    test_traces = {s["trace_id"] for s in read_jsonl(tmp_path / "out" / "test.jsonl")}
    assert report["items"] == len(test_traces) and report["items_overlapping"] >= 1
    assert report["share_overlapping"] < 0.5


def test_ngram_overlap_ignores_shared_preambles():
    from agenttune.data.decontam import NgramOverlap

    preamble = "You will operate a MySQL database with SQL to answer the question below, one statement per turn."
    overlap = NgramOverlap(n=6, boilerplate_docs=10)
    for i in range(12):
        overlap.add_item(f"db_{i}", f"{preamble}\nHow many drivers from country number {i} won a race in {1990 + i}?")
    overlap.freeze()
    for i in range(30):
        overlap.scan(f"{preamble}\nList the tables about circuits number {i}.")
    overlap.scan("Recall: how many drivers from country number 7 won a race in 1997? Nobody knows.")
    report = overlap.report()
    assert [e["item"] for e in report["examples"]] == ["db_7"] and report["items_overlapping"] == 1
    assert report["boilerplate_ngrams_ignored"] > 0 and report["training_texts_scanned"] == 31


def test_bad_input_names_file_line_and_field(tmp_path):
    good = json.loads(json.dumps(GOOD))
    bad = dict(good, id="t2", messages=[{"role": "robot", "content": "x"}])
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    cfg = {"split": {"val": 0.1, "test": 0.2}, "format": {"templates": {"react": 1}, "tool_formats": {"react_list": 1}}}
    with pytest.raises(FormatError, match=r"t.jsonl:3: id=t2: field 'messages\[0\].role': unknown role 'robot'"):
        format_samples([src], tmp_path / "out", cfg, seed=1)
    src.write_text(json.dumps(good) + "\n" + "{not json\n")
    with pytest.raises(FormatError, match=r"t.jsonl:2: malformed JSON"):
        format_samples([src], tmp_path / "out", cfg, seed=1)
    src.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(FormatError, match=r"t.jsonl:2: id=t1: duplicate trace id \(first at .*t.jsonl:1\)"):
        format_samples([src], tmp_path / "out", cfg, seed=1)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_ingest_then_format_accounts_for_every_record(tmp_path):
    """Quarantine accounting from raw records to samples: read = kept + quarantined + deduplicated at ingest,
    and every kept trace has exactly one outcome in the format stage."""
    traces = generate_traces(120, seed=13)
    lines = [json.dumps(t) for t in traces] + [
        "{broken", json.dumps(traces[0]),  # malformed; exact duplicate
        json.dumps(dict(traces[1], id="x1", messages=[])),  # empty trace
        json.dumps(dict(traces[2], id="x2", tools=[])),  # calls a tool not in its list
    ]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    general = _write(tmp_path / "g.jsonl", _general(300))
    ing = ingest([SourceSpec("demo", str(raw), "canonical"), SourceSpec("chat", str(general), "canonical")],
                 tmp_path / "traces.jsonl", tmp_path / "quarantine.jsonl", tmp_path / "ingest.json")
    demo = ing["sources"][0]
    assert (demo["read"], demo["kept"], demo["quarantined"], demo["deduplicated"]) == (124, 120, 3, 1)
    assert demo["quarantined_by_kind"] == {"empty_trace": 1, "malformed_json": 1, "unknown_tool": 1}
    stats = format_samples([tmp_path / "traces.jsonl"], tmp_path / "out", _full_cfg(), seed=1, roles={"chat": "general"})
    assert stats["traces_read"] == ing["total"]["kept"] == 420
    assert stats["accounting"]["traces"]["read"] == 120 and stats["accounting"]["general"]["read"] == 300
    for role in stats["accounting"].values():
        assert role["read"] == sum(v for k, v in role.items() if k != "read")


def test_samples_keep_the_evaluation_contract(tmp_path):
    src = _write(tmp_path / "t.jsonl", generate_traces(200, seed=14))
    general = _write(tmp_path / "g.jsonl", _general(400))
    stats = format_samples([src, general], tmp_path / "out", _full_cfg(negatives={"order": ["no_tool", "mined"]}),
                           seed=1, roles={"chat": "general"})
    samples = _all(tmp_path / "out")
    for split, rows in samples.items():
        for s in rows:
            assert {"id", "trace_id", "source", "kind", "task", "template", "tool_format", "messages"} <= set(s)
            assert s["kind"] in ("tool", "no_tool")
            for m in s["messages"]:
                assert m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                assert isinstance(m["loss"], bool) and (("tool_calls" in m) == (m["role"] == "assistant"))
            if s["kind"] == "no_tool":
                assert s.get("general") or s["negative_kind"] in ("user", "no_tool", "mined")
        assert len({s["id"] for s in rows}) == len(rows)
    items = items_from_samples(samples["test"], "heldout", "test")
    assert {it["template"] for it in items} == set(ALL_TEMPLATES)
    for it in items:
        get_template(it["template"]).STOP
        if it["expected"] is None:
            assert it["kind"] == "no_tool"
    lengths = stats["lengths"]["train"]["chars"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert lengths["max"] == max(sum(len(m["content"]) for m in s["messages"]) for s in samples["train"])
    for split in SPLITS:
        c = stats["splits"][split]
        assert c["samples"] == len(samples[split])
        assert sum(v for k, v in c.items() if k.startswith("template:")) == c["samples"]
        assert sum(v for k, v in c.items() if k.startswith("tool_format:")) == c["samples"]


def test_negative_shares_split_the_target_between_kinds(tmp_path):
    src = _write(tmp_path / "t.jsonl", generate_traces(400, seed=21))
    general = _write(tmp_path / "g.jsonl", _general(900))
    roles = {"chat": "general"}
    shares = _full_cfg(negatives={"order": ["mined", "no_tool"], "shares": {"mined": 0.5, "no_tool": 0.5}})
    first = _full_cfg(negatives={"order": ["mined", "no_tool"]})
    a = format_samples([src, general], tmp_path / "a", shares, seed=5, roles=roles)
    b = format_samples([src, general], tmp_path / "b", first, seed=5, roles=roles)
    for split in ("train", "val"):
        ra, rb = a["ratio"][split], b["ratio"][split]
        # The same number of negatives either way; with shares it is split half and half (half up), not mined only.
        assert ra["negatives"] == rb["negatives"] and ra["target_negatives"] == rb["target_negatives"]
        need = sum(ra["negatives_by_kind"][k] for k in ("mined", "no_tool"))  # traces (2 samples each)
        assert rb["negatives_by_kind"]["no_tool"] == 0 or rb["candidates"]["mined"] < need
        assert ra["negatives_by_kind"]["mined"] == min(ra["candidates"]["mined"], (need + 1) // 2)
    taken = a["ratio"]["train"]["negatives_by_kind"]
    assert taken["mined"] > 0 and taken["no_tool"] > 0
    assert abs(taken["mined"] - taken["no_tool"]) <= 1
    samples = _all(tmp_path / "a")["train"]
    assert Counter(s.get("negative_kind") for s in samples)["mined"] == 2 * taken["mined"]
    with pytest.raises(FormatError, match="add up to 1.2"):
        format_samples([src], tmp_path / "c", _full_cfg(negatives={"shares": {"mined": 0.6, "no_tool": 0.6}}), seed=5)
    with pytest.raises(FormatError, match="does not list"):
        format_samples([src], tmp_path / "d", _full_cfg(negatives={"order": ["no_tool"], "shares": {"user": 0.5}}),
                       seed=5)


def test_distractor_tools_are_added_to_train_and_val_tool_traces_only(tmp_path):
    traces = generate_traces(300, seed=22)
    src = _write(tmp_path / "t.jsonl", traces)
    by_id = {t["id"]: t for t in traces}
    all_names = sorted({t["name"] for tr in traces for t in tr["tools"]}, key=len, reverse=True)
    plain = format_samples([src], tmp_path / "plain", _full_cfg(), seed=3)
    off = format_samples([src], tmp_path / "off", _full_cfg(distractors={"share": 0.0, "max": 3}), seed=3)
    on = format_samples([src], tmp_path / "on", _full_cfg(distractors={"share": 1.0, "max": 2}), seed=3)
    again = format_samples([src], tmp_path / "again", _full_cfg(distractors={"share": 1.0, "max": 2}), seed=3)
    for split in SPLITS:
        name = f"{split}.jsonl"
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "off" / name).read_bytes()
        assert (tmp_path / "on" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert plain["splits"] == off["splits"] and "with_distractors" not in plain["splits"]["train"]
    # Test items are the benchmark: left exactly as they were.
    assert (tmp_path / "plain" / "test.jsonl").read_bytes() == (tmp_path / "on" / "test.jsonl").read_bytes()
    with_extra = 0
    for split in ("train", "val"):
        plain_rows = {s["id"]: s for s in read_jsonl(tmp_path / "plain" / f"{split}.jsonl")}
        for s in read_jsonl(tmp_path / "on" / f"{split}.jsonl"):
            before = plain_rows[s["id"]]
            calls = [m.get("tool_calls") for m in s["messages"]]
            assert calls == [m.get("tool_calls") for m in before["messages"]]  # what is trained to call is unchanged
            assert [m["content"] for m in s["messages"][1:]] == [m["content"] for m in before["messages"][1:]]
            if s["kind"] != "tool" or s["template"] == "passthrough":
                assert "distractors" not in s and s == before
                continue
            assert 1 <= s["distractors"] <= 2
            with_extra += 1
            system = s["messages"][0]["content"]
            own = {t["name"] for t in by_id[s["trace_id"]]["tools"]} - {"translate"}  # held out (_full_cfg)
            offered = set()
            for n in all_names:  # longest first, so that a name inside another is not counted twice
                if n in system:
                    offered.add(n)
                    system = system.replace(n, "")
            assert own <= offered and len(offered - own) == s["distractors"]
    assert with_extra == on["splits"]["train"]["with_distractors"] + on["splits"]["val"]["with_distractors"] > 0


@pytest.mark.slow
def test_rules_ingest_configured_sources_with_roles(tmp_path):
    """The ingest and format_samples rules on the tiny config plus two configured sources: a ShareGPT-tools file
    with a bad record (quarantined) and Alpaca general chat mixed at eta."""
    import shutil
    import subprocess
    import sys

    run = "pytest-format"
    out = REPO / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    glaive = tmp_path / "glaive.json"
    tool = json.dumps([{"name": "get_weather", "description": "Weather in a city.",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]}}])
    glaive.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": f"Weather in city {i}?"},
                           {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                         "arguments": {"city": f"C{i}"}})},
                           {"from": "observation", "value": "sunny"},
                           {"from": "gpt", "value": "Sunny."}], "tools": tool} for i in range(40)]
        + [{"conversations": [{"from": "robot", "value": "?"}], "tools": tool}]))
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Write a line about {i}.", "input": "", "output": f"{i}."}
                                  for i in range(400)]))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "run": run,
        "data": {"sources": [{"name": "glaive", "path": str(glaive), "format": "sharegpt_tools"},
                             {"name": "alpaca", "path": str(alpaca), "format": "alpaca", "role": "general"}]},
        "format": {"mix": {"eta": 0.5}},
    }))
    target = f"results/{run}/samples/stats.json"
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    # --configfile takes several files, so the target comes first.
    proc = subprocess.run([snakemake, target, "--cores", "2", "--configfile", "config/test/config.yaml", str(overlay)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    try:
        stats = json.loads((out / "samples" / "stats.json").read_text())
        assert stats["ingest"]["glaive"]["quarantined_by_kind"] == {"unknown_role": 1}
        assert stats["ingest"]["glaive"]["kept"] == 40 and stats["ingest"]["demo"]["kept"] == 60
        assert stats["accounting"]["general"]["read"] == 400 and stats["eta"]["train"]["achieved_value"] == 0.5
        assert stats["splits"]["train"]["source:glaive"] > 0
        assert (out / "traces" / "quarantine.jsonl").read_text().count("\n") == 1
        # The tool_call template is in the tiny config's mix, so the stage read the model's chat template.
        assert "model" in json.loads((out / "samples" / "manifest.json").read_text())["inputs"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_failed_run_keeps_the_previous_samples_and_leaves_no_temp_files(tmp_path):
    """The three split files are replaced together, and only once every check has passed."""
    src = _write(tmp_path / "t.jsonl", generate_traces(80, seed=4))
    out = tmp_path / "out"
    format_samples([src], out, _full_cfg(), seed=2)
    before = {split: (out / f"{split}.jsonl").read_bytes() for split in SPLITS}
    wrong = {"total": {"kept": 79}, "sources": []}  # stats of another traces file: refused after rendering
    with pytest.raises(FormatError, match="ingest kept 79 traces but 80 were read"):
        format_samples([src], out, _full_cfg(renders_per_trace=1), seed=3, ingest_stats=wrong)
    assert {split: (out / f"{split}.jsonl").read_bytes() for split in SPLITS} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

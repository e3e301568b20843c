"""Augmentations of the data stage (issue 22, part 2): name masking, irrelevance copies, tool-list shuffling.

The stage is run through `format_samples`, the function scripts/format_samples.py calls."""

import copy
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from agenttune.common.atomic import read_jsonl
from agenttune.data.augment import (IRRELEVANT_ANSWER, IRRELEVANT_SUFFIX, irrelevant_copy, mask_names, name_mapping,
                                    shuffle_tools)
from agenttune.data.format import SPLITS, FormatError, assign_split, format_samples
from agenttune.demo.generator import generate_traces
from agenttune.render import TEMPLATES, parse
from agenttune.render.samples import render_trace
from agenttune.render.tool_formats import TOOL_FORMATS, command_label

REPO = Path(__file__).resolve().parents[1]
ALL_TEMPLATES = {"react": 2, "openai_json": 1, "autogpt": 1, "tool_call": 1}
ALL_FORMATS = {"react_list": 1, "json_schema": 1, "autogpt": 1}
ON = {"name_masking": {"p": 0.5}, "irrelevance": {"share": 0.1}, "shuffle_tools": True}

# Nested parameters: an object, an array of objects, a free-form object whose keys are data, not parameter names.
NESTED = {
    "id": "nested-1", "source": "unit",
    "tools": [
        {"name": "book_trip", "description": "Book a trip (see the traveller's name).",
         "parameters": {"type": "object", "additionalProperties": False, "required": ["traveller", "legs"],
                        "properties": {
                            "traveller": {"type": "object", "description": "who travels",
                                          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                                          "required": ["name"]},
                            "legs": {"type": "array", "items": {
                                "type": "object", "additionalProperties": False, "required": ["city"],
                                "properties": {"city": {"type": "string"}, "nights": {"type": "integer"}}}},
                            "notes": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        {"name": "get_weather", "description": "Weather in a city.",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "translate", "description": "Translate a text.",
         "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    ],
    "messages": [
        {"role": "system", "content": "Call book_trip for bookings."},
        {"role": "user", "content": "Please book_trip: Ada (36), two nights in Oslo."},
        {"role": "assistant", "content": "I will use book_trip, then check the weather.",
         "tool_calls": [{"name": "book_trip", "arguments": {"traveller": {"name": "Ada", "age": 36},
                                                             "legs": [{"city": "Oslo", "nights": 2}],
                                                             "notes": {"name": "window seat"}}}]},
        {"role": "tool", "name": "book_trip", "content": "{\"booked\": \"book_trip ok\", \"city\": \"Oslo\"}"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "assistant", "content": "Booked; it is 4 C in Oslo."},
    ],
    "meta": {"task": "trip", "kind": "tool"},
}


def _write(path, traces):
    path.write_text("".join(json.dumps(t) + "\n" for t in traces), encoding="utf-8")
    return path


def _cfg(augment=None, **fmt):
    cfg = {"split": {"val": 0.15, "test": 0.2, "holdout": {"tools": [], "tasks": []}},
           "format": {"templates": ALL_TEMPLATES, "tool_formats": ALL_FORMATS, "renders_per_trace": 2,
                      "distractors": {"share": 0.5, "max": 2}, **fmt}}
    if augment is not None:
        cfg["format"]["augment"] = augment
    return cfg


def _samples(out):
    return {s: read_jsonl(Path(out) / f"{s}.jsonl") for s in SPLITS}


def _unmask(value, mapping):
    """A masked sample's text or calls with the original names put back (labels of the autogpt format too)."""
    back = {}
    for kind in ("functions", "parameters"):
        for original, masked in mapping[kind].items():
            back[masked] = original
            if kind == "functions":
                back[command_label(masked)] = command_label(original)
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, sorted(back, key=len, reverse=True)))
                         + r")(?![\w])")

    def walk(v):
        if isinstance(v, str):
            return pattern.sub(lambda m: back[m.group(0)], v)
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        return [walk(x) for x in v] if isinstance(v, list) else v

    return walk(value)


# --- one trace ------------------------------------------------------------------------------------------------


def test_masked_calls_validate_against_their_renamed_schemas():
    traces = [NESTED] + generate_traces(120, seed=5)
    checked = 0
    for trace in traces:
        masked, mapping = mask_names(trace, seed=7)
        before = {t["name"]: t["parameters"] for t in trace["tools"]}
        after = {t["name"]: t["parameters"] for t in masked["tools"]}
        for m, mm in zip(trace["messages"], masked["messages"], strict=True):
            assert mm["role"] == m["role"] and mm.get("loss") == m.get("loss")
            for call, masked_call in zip(m.get("tool_calls") or [], mm.get("tool_calls") or [], strict=True):
                jsonschema.validate(call["arguments"], before[call["name"]])  # the source's call is valid...
                jsonschema.validate(masked_call["arguments"], after[masked_call["name"]])  # ...and so is the mask
                assert masked_call["name"] == mapping["functions"][call["name"]] != call["name"]
                checked += 1
            if m["role"] in ("user", "tool"):
                assert mm["content"] == m["content"]  # user text and tool results untouched
        # Descriptions untouched, names all replaced, nothing else changed in the tools.
        assert [t["description"] for t in masked["tools"]] == [t["description"] for t in trace["tools"]]
        assert not {t["name"] for t in masked["tools"]} & {t["name"] for t in trace["tools"]}
        assert _unmask(masked, mapping) == trace
    assert checked > 100

    masked, mapping = mask_names(NESTED, seed=7)
    p, f = mapping["parameters"], mapping["functions"]
    trip = masked["tools"][0]["parameters"]
    assert trip["required"] == [p["traveller"], p["legs"]]
    assert trip["properties"][p["traveller"]]["required"] == [p["name"]]
    assert set(trip["properties"][p["legs"]]["items"]["properties"]) == {p["city"], p["nights"]}
    assert trip["properties"][p["traveller"]]["description"] == "who travels"
    args = masked["messages"][2]["tool_calls"][0]["arguments"]
    assert args[p["notes"]] == {"name": "window seat"}  # a free-form object's keys are data, not parameter names
    assert args[p["legs"]] == [{p["city"]: "Oslo", p["nights"]: 2}]
    assert masked["messages"][3]["name"] == f["book_trip"]  # the tool message names the masked tool
    # Identifier-like function names are replaced as whole words in system and assistant text; user text is not.
    assert masked["messages"][0]["content"] == f"Call {f['book_trip']} for bookings."
    assert masked["messages"][2]["content"] == f"I will use {f['book_trip']}, then check the weather."
    assert masked["messages"][1]["content"] == NESTED["messages"][1]["content"]
    assert re.fullmatch(r"fn_[a-z2-9]{5}", f["book_trip"]) and re.fullmatch(r"arg_[a-z2-9]{4}", p["city"])


def test_masked_and_plain_renders_differ_only_in_names():
    """Every template and tool format: putting the original names back into the masked render gives the plain
    render exactly, so which turns are trained (the loss flags), the text and the calls mean the same."""
    traces = [NESTED] + generate_traces(40, seed=6)
    for trace in traces:
        masked, mapping = mask_names(trace, seed=3)
        for template in TEMPLATES:
            if template == "passthrough":
                continue
            for fmt in TOOL_FORMATS:
                plain = render_trace(trace, template, fmt)
                other = render_trace(masked, template, fmt)
                assert other != plain
                assert [(m["role"], m["loss"]) for m in other["messages"]] == \
                       [(m["role"], m["loss"]) for m in plain["messages"]]
                assert _unmask(other, mapping) == plain, (trace["id"], template, fmt)


def test_masks_are_deterministic_by_seed_and_trace():
    a = name_mapping(NESTED, seed=1)
    assert a == name_mapping(copy.deepcopy(NESTED), seed=1)
    b = name_mapping(NESTED, seed=2)
    assert set(a["functions"].values()).isdisjoint(b["functions"].values())
    other = name_mapping(dict(NESTED, id="nested-2"), seed=1)
    assert other["functions"] != a["functions"]
    names = [*a["functions"].values(), *a["parameters"].values()]
    assert len(set(names)) == len(names)


def test_masking_replaces_function_names_in_the_reasoning_too():
    """An assistant turn's `reasoning` (what qwen3 writes in <think>) is assistant text: masked like its content;
    a message without reasoning gets none."""
    trace = copy.deepcopy(NESTED)
    trace["messages"][2]["reasoning"] = "book_trip first; get_weather after. translate is not needed."
    masked, mapping = mask_names(trace, seed=3)
    fn = mapping["functions"]
    assert masked["messages"][2]["reasoning"] == (f"{fn['book_trip']} first; {fn['get_weather']} after. "
                                                  "translate is not needed.")  # a plain word stays
    assert "reasoning" not in masked["messages"][4] and trace["messages"][2]["reasoning"].startswith("book_trip")
    # What the qwen3 template writes in <think> carries the masked names, never the original ones.
    sample = render_trace(masked, "qwen3", "json_schema")
    think = [m["reasoning"] for m in sample["messages"] if m.get("reasoning")]
    assert think == [masked["messages"][2]["reasoning"]]


def test_irrelevance_copy_removes_the_called_tools_and_answers_without_a_call():
    irrelevant = irrelevant_copy(NESTED)
    assert irrelevant["id"] == "nested-1" + IRRELEVANT_SUFFIX
    assert [t["name"] for t in irrelevant["tools"]] == ["translate"]  # every called tool removed, the rest kept
    assert [m["role"] for m in irrelevant["messages"]] == ["system", "user", "assistant"]
    assert irrelevant["messages"][-1] == {"role": "assistant", "content": IRRELEVANT_ANSWER}
    assert irrelevant["meta"]["kind"] == "no_tool" and NESTED["meta"]["kind"] == "tool"
    for template in TEMPLATES:
        if template == "passthrough":
            continue
        sample = render_trace(irrelevant, template, "json_schema")
        assert sample["kind"] == "no_tool"
        trained = [m for m in sample["messages"] if m["role"] == "assistant" and m["loss"]]
        assert len(trained) == 1 and parse(template, trained[0]["content"]).status == "answer"
        assert "book_trip" not in sample["messages"][0]["content"].replace("Call book_trip for", "")
    only_called = dict(NESTED, tools=NESTED["tools"][:2])
    assert irrelevant_copy(only_called) is None  # no tool left: not made (the stage counts it)


def test_shuffle_reorders_the_tools_only():
    trace = generate_traces(30, seed=8)
    orders = set()
    for t in trace:
        s = shuffle_tools(t, seed=4)
        assert s["messages"] == t["messages"] and sorted(map(json.dumps, s["tools"])) == sorted(map(json.dumps, t["tools"]))
        assert s == shuffle_tools(t, seed=4)
        orders.add([x["name"] for x in s["tools"]] != [x["name"] for x in t["tools"]])
    assert orders == {True, False}


# --- the stage ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The stage run plain, with augmentation off (zeros), on, on again, and on with another seed."""
    tmp = tmp_path_factory.mktemp("augment")
    traces = generate_traces(260, seed=21)
    # Benchmark items (eval-only, always test) and single-tool traces (an irrelevance copy would have no tool).
    for i, t in enumerate(generate_traces(12, seed=22)):
        traces.append({**t, "id": f"bench-{i}", "meta": {**t["meta"], "eval_only": True}})
    for t in generate_traces(40, seed=23):
        called = {c["name"] for m in t["messages"] for c in m.get("tool_calls") or []}
        if len(called) == 1:
            traces.append({**t, "id": "single-" + t["id"], "tools": [x for x in t["tools"] if x["name"] in called]})
    src = _write(tmp / "t.jsonl", traces)
    off = {"name_masking": {"p": 0.0}, "irrelevance": {"share": 0.0}, "shuffle_tools": False}
    out = {"traces": {t["id"]: t for t in traces}}
    for name, augment, seed in (("plain", None, 5), ("off", off, 5), ("on", ON, 5), ("again", ON, 5),
                                ("seed", ON, 6), ("plain_seed", None, 6)):
        out[name] = (format_samples([src], tmp / name, _cfg(augment), seed=seed), _samples(tmp / name), tmp / name)
    return out


def test_off_is_byte_identical_and_on_is_deterministic(runs):
    for split in SPLITS:
        name = f"{split}.jsonl"
        assert (runs["plain"][2] / name).read_bytes() == (runs["off"][2] / name).read_bytes()
        assert (runs["on"][2] / name).read_bytes() == (runs["again"][2] / name).read_bytes()
    assert "augment" not in runs["plain"][0] and runs["off"][0]["augment"]["irrelevance"]["share"] == 0.0
    assert runs["on"][0] == runs["again"][0]
    # Another seed masks other traces with other names.
    masked = {s["trace_id"]: s["messages"][0]["content"] for s in runs["on"][1]["train"] if s.get("masked_names")}
    masked_other = {s["trace_id"]: s["messages"][0]["content"] for s in runs["seed"][1]["train"]
                    if s.get("masked_names")}
    assert masked.keys() != masked_other.keys()
    both = masked.keys() & masked_other.keys()
    assert both and all(masked[t] != masked_other[t] for t in both)


def test_test_and_benchmark_items_are_never_augmented(runs):
    assert (runs["plain"][2] / "test.jsonl").read_bytes() == (runs["on"][2] / "test.jsonl").read_bytes()
    test = runs["on"][1]["test"]
    assert any(s.get("eval_only") for s in test)
    assert not [s for s in test if {"masked_names", "tools_shuffled"} & s.keys() or IRRELEVANT_SUFFIX in s["id"]]
    assert "test" not in runs["on"][0]["augment"]["irrelevance"]


def test_augmented_samples_are_counted_and_keep_their_meaning(runs):
    stats, samples, _ = runs["on"]
    plain = {s["id"]: s for split in ("train", "val") for s in runs["plain"][1][split]}
    augment = stats["augment"]
    where = {s["trace_id"]: split for split in SPLITS for s in samples[split]}
    masked_kinds = Counter()
    for split in ("train", "val"):
        rows = samples[split]
        c = stats["splits"][split]
        masked = [s for s in rows if s.get("masked_names")]
        shuffled = [s for s in rows if s.get("tools_shuffled")]
        copies = [s for s in rows if s.get("negative_kind") == "irrelevant"]
        assert masked and shuffled and copies
        assert c["masked_names"] == len(masked) == augment["name_masking"][split]["samples"]
        assert c["tools_shuffled"] == len(shuffled) == augment["shuffle_tools"][split]["samples"]
        assert augment["name_masking"][split]["traces"] == len({s["trace_id"] for s in masked})
        irr = augment["irrelevance"][split]
        assert c["negative_kind:irrelevant"] == len(copies) == irr["samples"] == 2 * irr["copies"]
        assert irr["copies"] == irr["target"] == round(irr["tool_traces"] * 0.1 / 0.9)
        assert irr["achieved_share"] == round(irr["copies"] / (irr["tool_traces"] + irr["copies"]), 6)
        # The ratio's negatives are as they were; the copies come on top.
        assert stats["ratio"][split] == runs["plain"][0]["ratio"][split]
        for s in copies:
            original = s["trace_id"].removesuffix(IRRELEVANT_SUFFIX)
            assert where[original] == split  # the copy stays in its original's split
            assert s["kind"] == "no_tool" and not any(m.get("tool_calls") for m in s["messages"])
            trained = [m for m in s["messages"] if m["role"] == "assistant" and m["loss"]]
            assert len(trained) == 1 and IRRELEVANT_ANSWER in trained[0]["content"]
        for s in rows:
            if s.get("negative_kind") == "irrelevant" or s.get("general"):
                continue
            before = plain[s["id"]]
            # Which turns are trained, and the roles, are as without augmentation.
            assert [(m["role"], m["loss"]) for m in s["messages"]] == \
                   [(m["role"], m["loss"]) for m in before["messages"]]
            if s.get("masked_names"):
                trace = runs["traces"][s["trace_id"]]
                calls = [c for m in s["messages"] for c in m.get("tool_calls") or []]
                assert bool(calls) == (s["kind"] == "tool")  # negatives with tools are masked too
                assert all(re.fullmatch(r"fn_[a-z2-9]{5}", c["name"]) for c in calls)
                assert all(c["name"] in s["messages"][0]["content"] for c in calls)
                originals = {t["name"] for t in trace["tools"] if "_" in t["name"]}
                assert not any(re.search(rf"\b{n}\b", s["messages"][0]["content"]) for n in originals)
                masked_kinds[s["kind"]] += 1
            elif not s.get("tools_shuffled"):
                assert s == before
    assert masked_kinds["tool"] and masked_kinds["no_tool"]
    # Single-tool traces without distractors would keep no tool: counted, never copied.
    no_tool_left = sum(augment["irrelevance"][s]["no_tools_left"] for s in ("train", "val"))
    with_distractors = {s["trace_id"] for split in SPLITS for s in samples[split] if s.get("distractors")}
    single = [t for t in runs["traces"]
              if t.startswith("single-") and where.get(t) in ("train", "val") and t not in with_distractors]
    assert no_tool_left >= len(single) > 0
    assert not any(s["trace_id"] == t + IRRELEVANT_SUFFIX for t in single for split in SPLITS
                   for s in samples[split])


def test_decontamination_sees_the_augmented_training_text(tmp_path):
    """A test item that shares text only with an irrelevance copy's answer is flagged once copies are made: the
    contamination report reads the training text after augmentation."""
    traces = generate_traces(60, seed=31)
    seed = 4
    victim = next(t for t in traces if assign_split(t["id"], 0.15, 0.2, seed) == "test")
    victim["messages"][0]["content"] = f"My assistant once said: {IRRELEVANT_ANSWER} Why?"
    src = _write(tmp_path / "t.jsonl", traces)
    reports = {}
    for name, augment in (("plain", None), ("copies", {"irrelevance": {"share": 0.1}})):
        cfg = _cfg(augment)
        cfg["split"]["decontam"] = {"ngram": 8, "boilerplate_docs": 1000}
        reports[name] = format_samples([src], tmp_path / name, cfg, seed=seed)
    assert reports["copies"]["augment"]["irrelevance"]["train"]["copies"] > 0
    assert victim["id"] not in {e["item"] for e in reports["plain"]["contamination"]["examples"]}
    assert victim["id"] in {e["item"] for e in reports["copies"]["contamination"]["examples"]}
    assert reports["copies"]["contamination"]["training_texts_scanned"] > \
        reports["plain"]["contamination"]["training_texts_scanned"]


@pytest.mark.parametrize("augment, key, words", [
    ({"name_masking": {"p": 1.5}}, "format.augment.name_masking.p", "must be in [0, 1]"),
    ({"name_masking": {"p": -0.1}}, "format.augment.name_masking.p", "must be in [0, 1]"),
    ({"irrelevance": {"share": 1.0}}, "format.augment.irrelevance.share", "leaves no positive traces"),
    ({"irrelevance": {"share": -0.5}}, "format.augment.irrelevance.share", "must be in [0, 1)"),
])
def test_bad_augmentation_config_is_an_error_naming_the_key(tmp_path, augment, key, words):
    src = _write(tmp_path / "t.jsonl", generate_traces(20, seed=1))
    with pytest.raises(FormatError) as exc:
        format_samples([src], tmp_path / "out", _cfg(augment), seed=1)
    assert key in str(exc.value) and words in str(exc.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()
    # The run config is refused before any job, by the schema.
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["format"]["augment"] = augment
    with pytest.raises(WorkflowError, match="augment"):
        validate(cfg, str(REPO / "config" / "schema.yaml"))


def test_the_schema_accepts_the_augmentations_and_keeps_them_off_by_default():
    from agenttune.common.config import section_with_defaults

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert "augment" not in section_with_defaults(cfg["format"], "format")  # absent: off, nothing written
    cfg["format"]["augment"] = {"irrelevance": {"share": 0.11}}
    filled = section_with_defaults(cfg["format"], "format")["augment"]
    assert filled == {"name_masking": {"p": 0.0}, "irrelevance": {"share": 0.11}, "shuffle_tools": False}
    validate(cfg, str(REPO / "config" / "schema.yaml"))


# --- real data ------------------------------------------------------------------------------------------------


def test_real_traces_mask_validate_and_differ_only_in_names(tmp_path):
    """glaive and ToolBench (nested schemas, thoughts that quote function names): every masked trace is a valid
    canonical trace, every call the source got right still validates against its renamed schema, a masked render
    differs from the plain one only in names, and every irrelevance copy is a valid trace without a call."""
    from conftest import shared_data

    from agenttune.traces.canonical import validate_trace
    from agenttune.traces.ingest import SourceSpec, ingest

    sources = [
        SourceSpec("glaive", str(shared_data("glaive_toolcall", "glaive_toolcall_en_demo.json")), "sharegpt_tools"),
        SourceSpec("toolbench", str(shared_data("toolbench_example", "answer")), "openai_messages"),
    ]
    ingest(sources, tmp_path / "t.jsonl", tmp_path / "q.jsonl", tmp_path / "s.json")
    traces = read_jsonl(tmp_path / "t.jsonl")
    validated = copies = mentions = 0
    for i, trace in enumerate(traces):
        if not trace["tools"]:
            continue
        masked, mapping = mask_names(trace, seed=11)
        validate_trace(masked)
        schemas = {t["name"]: t["parameters"] for t in trace["tools"]}
        renamed = {t["name"]: t["parameters"] for t in masked["tools"]}
        for m, mm in zip(trace["messages"], masked["messages"], strict=True):
            for call, masked_call in zip(m.get("tool_calls") or [], mm.get("tool_calls") or [], strict=True):
                try:
                    jsonschema.validate(call["arguments"], schemas[call["name"]])
                except jsonschema.ValidationError:
                    continue  # the source's own call is not valid against its schema: nothing to keep
                jsonschema.validate(masked_call["arguments"], renamed[masked_call["name"]])
                validated += 1
            if m["role"] == "assistant" and m["content"] != mm["content"]:
                mentions += 1
        template = sorted(t for t in TEMPLATES if t != "passthrough")[i % 4]
        fmt = sorted(TOOL_FORMATS)[i % 3]
        assert _unmask(render_trace(masked, template, fmt), mapping) == render_trace(trace, template, fmt)
        irrelevant = irrelevant_copy(trace)
        if irrelevant is not None and any(m.get("tool_calls") for m in trace["messages"]):
            validate_trace(irrelevant)
            assert not any(m.get("tool_calls") for m in irrelevant["messages"])
            copies += 1
    assert validated > 100 and copies > 0
    assert mentions > 0  # ToolBench's thoughts name the function they call: replaced with the masked name


def test_irrelevance_target_is_exact():
    from agenttune.data.mix import irrelevance_target

    # copies / (T + copies) = share, rounded half up with exact fractions (0.2 is 1/5, not 0.2000000000000000111).
    assert [irrelevance_target(t, 0.1) for t in (0, 4, 5, 9, 144)] == [0, 0, 1, 1, 16]
    assert irrelevance_target(10, 0.5) == 10 and irrelevance_target(3, 0.2) == 1 and irrelevance_target(2, 0.2) == 1
    with pytest.raises(ValueError):
        irrelevance_target(10, 1.0)

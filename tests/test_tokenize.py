"""Tokenize stage: exact label masks for every template, the fast encoder equal to the reference path on all real
data, over-long handling, shard plans that stream, byte-identical shards, packing and the manifest."""

import inspect
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from agenttune.render import FAMILIES, TEMPLATES, get_template
from agenttune.tokenize.encoder import (IGNORE_INDEX, ChatEncoder, Dropped, Encoded, SampleDropped, encode_sample,
                                        encode_sample_reference)
from agenttune.tokenize.load import load_shards
from agenttune.tokenize.manifest import gather_manifest, manifest_extra
from agenttune.tokenize.plan import plan_shards, plan_split, read_shard_samples
from agenttune.tokenize.shards import tokenize_shard
from agenttune.tokenize.split import tokenize_split

from conftest import shared_data
from test_canonical import GOOD

# Templates whose samples are ChatML turns for the model's template; the family templates' text and labels:
# tests/test_families.py.
CHAT_TEMPLATES = sorted(set(TEMPLATES) - set(FAMILIES))

# Two steps with a parallel call, an observation each, then an answer.
MULTI = {
    "id": "t-multi", "source": "unit",
    "tools": [{"name": "get_weather", "description": "Weather.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
              {"name": "get_time", "description": "Local time.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time in Oslo and Rome?"},
        {"role": "assistant", "content": "Checking both.",
         "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                        {"name": "get_weather", "arguments": {"city": "Rome"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "tool", "name": "get_weather", "content": "18 C"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_time", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "get_time", "content": "09:00"},
        {"role": "assistant", "content": "Oslo 4 C at 09:00, Rome 18 C."},
    ],
}


def trained_segments(tokenizer, ids, labels):
    segs, cur = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE_INDEX:
            assert l == i
            cur.append(i)
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return [tokenizer.decode(s) for s in segs]


def expected_segments(tokenizer, sample):
    return [m["content"] + tokenizer.eos_token for m in sample["messages"]
            if m["role"] == "assistant" and m.get("loss") is not False]


def render(trace, template):
    module = get_template(template)
    fmt = inspect.signature(module.render).parameters["tool_format"].default
    return {"id": f"{trace['id']}#{template}", "template": template, "messages": module.render(trace, fmt)}


def assert_exact(tokenizer, sample, max_len=4096):
    ids, labels = encode_sample(tokenizer, sample, max_len)
    assert trained_segments(tokenizer, ids, labels) == expected_segments(tokenizer, sample)
    assert (ids, labels) == encode_sample_reference(tokenizer, sample, max_len)
    return ids, labels


# --- masks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
@pytest.mark.parametrize("trace", [GOOD, MULTI], ids=["one_call", "multi_step"])
def test_every_template_trains_exactly_the_assistant_turns(smol_tokenizer, template, trace):
    sample = render(trace, template)
    n_assistant = sum(m["role"] == "assistant" for m in sample["messages"])
    assert n_assistant >= 2
    assert_exact(smol_tokenizer, sample)


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_trace_ending_on_a_tool_turn(smol_tokenizer, template):
    # Cut the multi-step trace after the last tool result: the sample ends on the observation (context).
    sample = render(MULTI, template)
    cut = dict(sample, messages=sample["messages"][:-1])
    assert cut["messages"][-1]["role"] != "assistant"
    ids, labels = assert_exact(smol_tokenizer, cut)
    # The observation and everything after the last trained turn's end token is masked.
    last_trained = max(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert ids[last_trained] == smol_tokenizer.eos_token_id
    assert smol_tokenizer.decode(ids[last_trained + 1:]).strip().endswith(cut["messages"][-1]["content"] + "<|im_end|>")


def test_tool_role_messages_are_context(smol_tokenizer):
    sample = {"id": "tool-role", "messages": [
        {"role": "user", "content": "Weather in Oslo?", "loss": False},
        {"role": "assistant", "content": '{"name": "get_weather"}', "loss": True},
        {"role": "tool", "content": "4 C", "loss": False},
    ]}
    ids, labels = assert_exact(smol_tokenizer, sample)
    assert "4 C" in smol_tokenizer.decode(ids)


def test_agentinstruct_loss_flags_are_honoured(smol_tokenizer):
    # AgentInstruct's native flags: the prompt-setup reply "Ok." is loss false; null/absent/true are trained.
    trace = {"id": "db_x", "source": "agentinstruct", "tools": [], "meta": {"passthrough": True},
             "messages": [{"role": "user", "content": "You operate a MySQL database. Ready?"},
                          {"role": "assistant", "content": "Ok.", "loss": False},
                          {"role": "user", "content": "How many rows in t?"},
                          {"role": "assistant", "content": "Action: Operation\n```sql\nSELECT COUNT(*) FROM t;\n```",
                           "loss": True},
                          {"role": "user", "content": "[(3,)]"},
                          {"role": "assistant", "content": "Action: Answer\nFinal Answer: [3]", "loss": None}]}
    sample = render(trace, "passthrough")
    ids, labels = assert_exact(smol_tokenizer, sample)
    segments = trained_segments(smol_tokenizer, ids, labels)
    assert len(segments) == 2 and not any(s.startswith("Ok.") for s in segments)


def test_no_trained_turn_is_dropped_with_a_reason(smol_tokenizer):
    sample = render(GOOD, "react")
    for m in sample["messages"]:
        m["loss"] = False
    with pytest.raises(SampleDropped) as exc:
        encode_sample(smol_tokenizer, sample, 4096)
    assert exc.value.reason == "no_trained_token"


def test_overlong_drop_and_truncate_keep_whole_turns(smol_tokenizer):
    sample = render(GOOD, "react")
    ids, _ = encode_sample(smol_tokenizer, sample, 4096)
    with pytest.raises(SampleDropped) as exc:
        encode_sample(smol_tokenizer, sample, len(ids) - 1, "drop")
    assert exc.value.reason == "too_long"
    tids, tlabels = encode_sample(smol_tokenizer, sample, len(ids) - 3, "truncate")
    # The second assistant turn does not fit whole, so the sample ends after the first one.
    assert trained_segments(smol_tokenizer, tids, tlabels) == expected_segments(smol_tokenizer, sample)[:1]
    assert len(tids) < len(ids) - 3
    assert (tids, tlabels) == encode_sample_reference(smol_tokenizer, sample, len(ids) - 3, "truncate")
    with pytest.raises(SampleDropped) as exc:
        encode_sample(smol_tokenizer, sample, 20, "truncate")
    assert exc.value.reason == "no_whole_turn_fits"


def test_bad_message_names_the_field(smol_tokenizer):
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        encode_sample(smol_tokenizer, {"id": "b", "messages": [{"role": "user", "content": "x"},
                                                               {"role": "assistant", "content": None}]}, 64)


# --- the fast encoder's guards ------------------------------------------------------------------------------------


def test_content_dependent_template_goes_through_the_reference_path(smol_tokenizer):
    # A template that writes extra text when a user message mentions "secret": the learned layout cannot know,
    # the per-sample render check sees the difference and that sample takes the slow, exact path.
    template = smol_tokenizer.chat_template.replace(
        "message['content'] + '<|im_end|>'",
        "message['content'] + ('(flagged)' if 'secret' in message['content'] else '') + '<|im_end|>'")
    assert template != smol_tokenizer.chat_template
    encoder = ChatEncoder(smol_tokenizer.backend_tokenizer, template, dict(smol_tokenizer.special_tokens_map),
                          smol_tokenizer.eos_token, tokenizer_sha256="test")
    plain = render(GOOD, "react")
    flagged = json.loads(json.dumps(plain))
    flagged["messages"][1]["content"] += " (secret)"
    out = encoder.encode([plain, flagged], 4096)
    assert encoder.counts["reference_path"] == 1
    for sample, result in zip([plain, flagged], out):
        assert trained_segments(smol_tokenizer, result.input_ids.tolist(), result.labels.tolist()) == \
            expected_segments(smol_tokenizer, sample)
    assert "(flagged)" in smol_tokenizer.decode(out[1].input_ids.tolist())


def test_a_sample_the_template_refuses_is_named(smol_tokenizer):
    template = "{% for message in messages %}{% if message['role'] == 'tool' %}{{ raise_exception('no tool turns') }}" \
               "{% endif %}{% endfor %}" + smol_tokenizer.chat_template
    encoder = ChatEncoder(smol_tokenizer.backend_tokenizer, template, dict(smol_tokenizer.special_tokens_map),
                          smol_tokenizer.eos_token, tokenizer_sha256="test")
    ok = render(GOOD, "react")
    bad = {"id": "has-tool-turn", "messages": ok["messages"] + [{"role": "tool", "content": "x", "loss": False}]}
    with pytest.raises(ValueError, match="sample 'has-tool-turn': the chat template refuses it: no tool turns"):
        encoder.encode([ok, bad], 4096)


def test_piecewise_mismatch_falls_back_to_whole_text(smol_tokenizer, monkeypatch):
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    assert encoder.piecewise
    real = encoder._encode_piecewise

    def corrupted(texts):
        out = real(texts)
        ids, token_at = out[0]
        return [(ids[::-1].copy(), token_at)] + out[1:]

    monkeypatch.setattr(encoder, "_encode_piecewise", corrupted)
    sample = render(GOOD, "react")
    result = encoder.encode([sample], 4096)[0]
    assert encoder.counts["piecewise_mismatch"] == 1 and not encoder.piecewise
    assert (result.input_ids.tolist(), result.labels.tolist()) == encode_sample_reference(smol_tokenizer, sample, 4096)


def test_special_token_text_inside_content_is_counted(smol_tokenizer):
    sample = render(GOOD, "react")
    sample["messages"][1]["content"] += " <|im_end|>"
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    encoder.encode([sample], 4096)
    assert encoder.counts["special_tokens_in_content"] == 1


def test_folder_encoder_equals_the_transformers_tokenizer(smol_tokenizer, tiny_model_dir):
    # tiny_model_dir holds the SmolLM2 tokenizer saved by transformers: the same encoding without loading it.
    samples = [render(t, name) for t in (GOOD, MULTI) for name in CHAT_TEMPLATES]
    a = ChatEncoder.from_folder(tiny_model_dir).encode(samples, 4096)
    b = ChatEncoder.from_hf(smol_tokenizer).encode(samples, 4096)
    for x, y in zip(a, b):
        assert np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.labels, y.labels)


# --- real data ----------------------------------------------------------------------------------------------------


def real_samples(tmp_path) -> list[dict]:
    """Every trace of ../shared/data AgentInstruct + glaive, ingested, rendered in every template (pass-through for
    AgentInstruct's already-rendered trajectories)."""
    from agenttune.traces.canonical import read_traces
    from agenttune.traces.ingest import SourceSpec, ingest

    specs = [SourceSpec("agentinstruct", str(shared_data("agentinstruct", "db_538.jsonl")), "agentinstruct")]
    for path in sorted(shared_data("agentinstruct").glob("agenttuning_*_sample_raw.json")):
        specs.append(SourceSpec(path.stem.replace("agenttuning_", "").replace("_sample_raw", "") + "-sample",
                                str(path), "agentinstruct"))
    specs.append(SourceSpec("glaive", str(shared_data("glaive_toolcall", "glaive_toolcall_en_demo.json")),
                            "sharegpt_tools"))
    ingest(specs, tmp_path / "traces.jsonl", tmp_path / "quarantine.jsonl", tmp_path / "stats.json")
    samples = []
    for trace in read_traces(tmp_path / "traces.jsonl"):
        names = ["passthrough"] if (trace.get("meta") or {}).get("passthrough") else CHAT_TEMPLATES
        samples += [render(trace, name) for name in names]
    return samples


@pytest.fixture(scope="module")
def shared_samples(tmp_path_factory):
    return real_samples(tmp_path_factory.mktemp("real"))


def test_fast_encoder_equals_reference_on_all_real_data(smol_tokenizer, shared_samples):
    assert len(shared_samples) > 1500
    encoder = ChatEncoder.from_hf(smol_tokenizer, check_tokens=-1)  # also every piecewise id vs whole text
    results = encoder.encode(shared_samples, 4096, "truncate")
    assert encoder.piecewise and encoder.counts["piecewise_mismatch"] == 0
    assert encoder.counts["reference_path"] == 0  # the layout matched the template's own render every time
    kinds = {"encoded": 0, "dropped": 0}
    for sample, result in zip(shared_samples, results):
        try:
            ref = encode_sample_reference(smol_tokenizer, sample, 4096, "truncate")
        except SampleDropped as exc:
            assert isinstance(result, Dropped) and result.reason == exc.reason, sample["id"]
            kinds["dropped"] += 1
            continue
        assert isinstance(result, Encoded), sample["id"]
        assert (result.input_ids.tolist(), result.labels.tolist()) == ref, sample["id"]
        kinds["encoded"] += 1
    assert kinds["encoded"] > 1500


def test_real_data_masks_decode_to_the_assistant_turns(smol_tokenizer, shared_samples):
    # Every template and AgentInstruct's loss flags, on real traces: decoded trained spans = assistant text + eos.
    encoder = ChatEncoder.from_hf(smol_tokenizer)
    results = encoder.encode(shared_samples, 1 << 20)
    seen = set()
    for sample, result in zip(shared_samples, results):
        if isinstance(result, Dropped):
            assert result.reason == "no_trained_token"
            continue
        got = trained_segments(smol_tokenizer, result.input_ids.tolist(), result.labels.tolist())
        assert got == expected_segments(smol_tokenizer, sample), sample["id"]
        seen.add(sample["template"])
    assert seen == set(CHAT_TEMPLATES) | {"passthrough"}
    # db_538 marks the "Ok." setup reply loss false: those turns are present but never trained.
    flagged = [s for s in shared_samples if any(m.get("loss") is False and m["role"] == "assistant"
                                                for m in s["messages"])]
    assert len(flagged) >= 500


# --- plan, shards, manifest ---------------------------------------------------------------------------------------


def _write_samples(path, samples, blank_every=0):
    with open(path, "w", encoding="utf-8") as fh:
        for i, s in enumerate(samples):
            fh.write(json.dumps(s) + "\n")
            if blank_every and i % blank_every == 0:
                fh.write("\n")
    return path


def _demo_samples(n):
    out = []
    for i in range(n):
        trace = json.loads(json.dumps(MULTI if i % 2 else GOOD))
        trace["id"] = f"t{i:03d}"
        trace["messages"][-1]["content"] += " " + "more " * (i % 7)
        out.append(render(trace, CHAT_TEMPLATES[i % len(CHAT_TEMPLATES)]))
    return out


def test_plan_splits_evenly_and_covers_every_line(tmp_path):
    path = _write_samples(tmp_path / "train.jsonl", _demo_samples(23), blank_every=5)
    plan = plan_split(path, 10)
    assert [s["samples"] for s in plan["shards"]] == [8, 8, 7]
    assert plan["samples"] == 23 and plan["shards"][0]["byte_start"] == 0
    assert plan["shards"][-1]["byte_end"] == path.stat().st_size
    ids = [s["id"] for e in plan["shards"] for _, s in read_shard_samples(path, e, plan["bytes"])]
    assert ids == [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    assert plan_split(_write_samples(tmp_path / "empty.jsonl", []), 10)["shards"] == [
        {"shard": 0, "first_line": 1, "samples": 0, "byte_start": 0, "byte_end": 0}]


def test_a_shard_reads_only_its_byte_range(tmp_path):
    samples = _demo_samples(6)
    path = _write_samples(tmp_path / "train.jsonl", samples)
    plan = plan_split(path, 3)
    # Corrupt a line of the second shard: the first shard does not read it; the second names file and line.
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4][:-20] + "\n"
    path.write_text("".join(lines))
    first, second = plan["shards"]
    assert len(list(read_shard_samples(path, first))) == 3
    with pytest.raises(ValueError, match=r"train.jsonl:5: malformed JSON"):
        list(read_shard_samples(path, second))
    with pytest.raises(ValueError, match="changed after planning"):
        list(read_shard_samples(path, first, plan["bytes"]))


@pytest.mark.parametrize("packing", [False, True])
def test_shards_are_byte_identical_and_account_for_every_sample(tmp_path, tiny_model_dir, smol_tokenizer, packing):
    samples = _demo_samples(40)
    samples[3]["messages"] = samples[3]["messages"][:2]  # no assistant turn: dropped, counted
    samples[7]["messages"][-1]["content"] += " much more" * 500  # over max_len: dropped, counted
    path = _write_samples(tmp_path / "train.jsonl", samples)
    cfg = {"max_len": 1024, "overlong": "drop", "samples_per_shard": 16, "packing": packing}
    m1 = tokenize_split(path, tiny_model_dir, tmp_path / "a", cfg)
    m2 = tokenize_split(path, tiny_model_dir, tmp_path / "b", cfg)
    s1, s2 = m1["splits"]["train"], m2["splits"]["train"]
    assert [s["sha256"] for s in s1["shards"]] == [s["sha256"] for s in s2["shards"]]
    assert len(s1["shards"]) == 3 and s1["samples_in"] == 40
    assert s1["samples_kept"] + s1["dropped"] == 40 and s1["dropped_by_reason"]["no_trained_token"] == 1
    assert s1["dropped_by_reason"]["too_long"] == 1
    paths = sorted((tmp_path / "a").glob("train-*.parquet"))
    table = pq.read_table(paths[0])
    assert table.schema.metadata[b"agenttune.packing"] == (b"true" if packing else b"false")
    rows = load_shards(paths)
    assert sum(len(r["input_ids"]) for r in rows) == s1["tokens"] == m1["total_tokens"]
    all_ids = [i for p in paths for ids in pq.read_table(p, columns=["sample_ids"])["sample_ids"].to_pylist()
               for i in ids]
    assert sorted(all_ids) == sorted(s["id"] for s in samples if s["id"] not in
                                     {i for p in (tmp_path / "a").glob("*.stats.json")
                                      for i in json.loads(p.read_text())["dropped_ids"]})
    # Each packed row's samples are exactly the samples encoded alone, back to back.
    by_id = {s["id"]: s for s in samples}
    for r, sample_ids in zip(load_shards(paths[:1]), pq.read_table(paths[0])["sample_ids"].to_pylist()):
        assert len(r["input_ids"]) <= cfg["max_len"] and sum(r["seq_lens"]) == len(r["input_ids"])
        start = 0
        for sid, n in zip(sample_ids, r["seq_lens"]):
            ids, labels = encode_sample(smol_tokenizer, by_id[sid], cfg["max_len"])
            assert r["input_ids"][start:start + n] == ids and r["labels"][start:start + n] == labels
            start += n
        assert len(sample_ids) == 1 or packing
    if packing:
        assert s1["rows"] < s1["samples_kept"] and 0.8 < s1["packing_efficiency"] <= 1
    else:
        assert s1["rows"] == s1["samples_kept"] and s1["packing_efficiency"] is None
    assert m1["tokenizer"]["tokenizer_sha256"] and m1["tokenizer"]["chat_template_sha256"]
    assert m1["row_lengths"] and sum(m1["row_lengths"].values()) == s1["samples_kept"]


def test_manifest_from_separate_shard_jobs(tmp_path, tiny_model_dir):
    # The pipeline's way: one plan over the splits, one call per shard, then the gather.
    paths = {split: _write_samples(tmp_path / f"{split}.jsonl", _demo_samples(n)) for split, n in
             (("train", 12), ("val", 0), ("test", 5))}
    cfg = {"max_len": 1024, "overlong": "truncate", "samples_per_shard": 5, "packing": True}
    plan = plan_shards(paths, cfg["samples_per_shard"])
    stat_paths = []
    for split, p in plan["splits"].items():
        for e in p["shards"]:
            stats = tokenize_shard(paths[split], plan, split, e["shard"], tiny_model_dir,
                                   tmp_path / "shards" / f"{split}-{e['shard']}.parquet", cfg)
            stat_paths.append(tmp_path / "shards" / f"{split}-{e['shard']}.stats.json")
            stat_paths[-1].write_text(json.dumps(stats))
    encoder = ChatEncoder.from_folder(tiny_model_dir)
    manifest = gather_manifest(stat_paths, tmp_path / "shards" / "manifest.json", manifest_extra(cfg, encoder, plan))
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert manifest["splits"]["val"]["rows"] == 0
    assert manifest["packing"] is True and manifest["config_hash"]
    assert manifest["total_tokens"] == manifest["splits"]["train"]["tokens"] > 0
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text()) == manifest

"""The OpenAI-compatible server on a real loopback HTTP socket (no mock), and candidate generation through it.

A tiny model is trained here, in a few seconds, to answer three candidate-generation requests with three JSON
replies; the server then serves that checkpoint and the generator, speaking plain HTTP, must get three usable
candidates, which merge into the validation benchmark after review."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from agenttune.evaluate.candidates import Endpoint, candidate_request, generate_candidates, read_candidates, write_candidates
from agenttune.evaluate.generate import generate
from agenttune.evaluate.serve import Backend, make_server

KEY = "sk-test-0123456789abcdef"
WEATHER = {"name": "get_weather", "description": "Get the weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CITIES = ["Lima", "Quito", "Oslo"]


def reply_for(k: int) -> str:
    return json.dumps({"query": f"How is the weather in {CITIES[k]}?",
                       "call": {"name": "get_weather", "arguments": {"city": CITIES[k]}}})


def _fits(model, ids, start) -> bool:
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, start - 1:-1]
    # A clear margin, so that the serving engine's (equally exact, differently ordered) arithmetic agrees.
    top2 = logits.topk(2, dim=-1).values
    return bool((logits.argmax(-1) == ids[0, start:]).all() and (top2[:, 0] - top2[:, 1]).min() > 1.0)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, smol_tokenizer):
    """A tiny Llama fitted to the three candidate requests the generator will send (as the server renders them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smol_tokenizer
    examples, earlier = [], []
    for k in range(3):
        messages, _, negative = candidate_request([[WEATHER]], k, 5, 0.0, earlier)
        assert not negative
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(reply_for(k) + tok.eos_token, add_special_tokens=False)["input_ids"]
        examples.append((torch.tensor([p_ids + t_ids]), len(p_ids)))
        earlier.append(f"How is the weather in {CITIES[k]}?")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(600):
            ids, start = examples[step % 3]
            hidden = model.model(input_ids=ids).last_hidden_state[0, start - 1:-1]
            logits = model.lm_head(hidden)  # the answer positions only: the vocabulary is 49k wide
            loss = torch.nn.functional.cross_entropy(logits, ids[0, start:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 30 == 29 and all(_fits(model, ids, start) for ids, start in examples):
                break  # teacher-forced argmax right everywhere: greedy decoding reproduces every reply
        assert all(_fits(model, ids, start) for ids, start in examples), "the tiny model did not fit the replies"
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("served") / "ckpt"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(trained_dir):
    logs: list[str] = []
    backend = Backend(trained_dir, template="react", tool_format="json_schema", name="tiny-served", log=logs.append)
    srv = make_server(backend, "127.0.0.1", 0, api_key=KEY, log=logs.append)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    yield {"url": f"http://{host}:{port}", "backend": backend, "logs": logs}
    srv.shutdown()
    srv.server_close()


def call(url: str, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_and_auth(server):
    status, body = call(server["url"], "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny-served"
    status, body = call(server["url"], "/v1/models", key=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = call(server["url"], "/v1/models", key="sk-wrong")
    assert status == 401
    status, _ = call(server["url"], "/v1/nothing")
    assert status == 404


def test_chat_completion_is_the_models_greedy_output(server):
    messages = [{"role": "user", "content": "Say something."}]
    status, body = call(server["url"], "/v1/chat/completions",
                        {"model": "tiny-served", "messages": messages, "max_tokens": 8, "temperature": 0.7})
    assert status == 200 and body["object"] == "chat.completion"
    backend = server["backend"]
    prompt = backend.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    (direct,) = generate(backend.model, backend.tokenizer, [prompt], 8, (), 1, log=lambda _m: None)
    choice = body["choices"][0]
    assert choice["message"]["content"] == direct.text
    assert body["usage"]["completion_tokens"] == direct.tokens
    assert choice["finish_reason"] == ("length" if direct.finish_reason == "length" else "stop")


def test_tools_are_rendered_in_the_template_and_the_output_parsed(server):
    from agenttune.render import parse

    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "max_tokens": 12,
            "tools": [{"type": "function", "function": WEATHER}]}
    status, resp = call(server["url"], "/v1/chat/completions", body)
    assert status == 200
    backend = server["backend"]
    prompt, stops, parsed = backend.prompt(body)
    assert parsed and stops == ("Observation:",) and "get_weather" in prompt and "Question: Weather in Oslo?" in prompt
    (direct,) = generate(backend.model, backend.tokenizer, [prompt], 12, [stops], 1, log=lambda _m: None)
    result = parse("react", direct.text)
    message = resp["choices"][0]["message"]
    if result.status == "call":
        assert message["tool_calls"][0]["function"]["name"] == result.calls[0].name
    else:
        assert message["content"] == (result.final_answer if result.status == "answer" else direct.text)


def test_bad_requests(server):
    assert call(server["url"], "/v1/chat/completions", {"messages": []})[0] == 400
    assert call(server["url"], "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                        "stream": True})[0] == 400
    assert call(server["url"], "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                        "max_tokens": 10 ** 6})[0] == 400
    req = urllib.request.Request(server["url"] + "/v1/chat/completions", data=b"{not json", method="POST")
    req.add_header("Authorization", f"Bearer {KEY}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400


def test_only_loopback_unless_allowed(server):
    with pytest.raises(ValueError, match="not a loopback"):
        make_server(server["backend"], "0.0.0.0", 0)


def test_candidate_generation_over_http_then_review_and_merge(server, tmp_path):
    from agenttune.evaluate.items import build_items

    endpoint = Endpoint(server["url"] + "/v1", "tiny-served", KEY, timeout_s=120)
    assert KEY not in repr(endpoint)
    logs: list[str] = []
    rows, stats = generate_candidates(endpoint, [[WEATHER]], 3, 0.0, 5, max_tokens=64, temperature=0.0,
                                      log=logs.append)
    assert stats["asked"] == 3 and stats["usable"] + stats["failed"] == 3
    assert stats["usable"] == 3, stats["failures"]
    assert [r["expected"]["arguments"]["city"] for r in rows] == CITIES
    assert all(r["status"] == "pending" for r in rows)
    # The key went over the wire (the server demands it) but into no log, output or stats.
    assert not any(KEY in line for line in server["logs"] + logs)
    assert KEY not in json.dumps(stats) and KEY not in json.dumps(rows)
    # A reviewer accepts one, edits one, rejects one; the reviewed file merges into the val benchmark.
    rows[0]["status"] = "accepted"
    rows[1]["status"], rows[1]["query"] = "edited", "Is it raining in Quito today?"
    rows[2]["status"] = "rejected"
    reviewed = tmp_path / "reviewed.jsonl"
    write_candidates(reviewed, rows)
    assert [c["status"] for c in read_candidates(reviewed)] == ["accepted", "edited", "rejected"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    items, info = build_items("val", {"val": {"candidates": str(reviewed)}}, 1, samples_path=empty, train_path=empty,
                              format_cfg={"templates": {"react": 1.0}, "tool_formats": {"react_list": 1.0}},
                              log=lambda _m: None)
    assert [it["review"] for it in items] == ["accepted", "edited"]
    assert "Is it raining in Quito today?" in items[1]["prompt_messages"][-1]["content"]


def test_unreachable_endpoint_is_counted_not_fatal():
    endpoint = Endpoint("http://127.0.0.1:9/v1", "none", None, timeout_s=2)
    rows, stats = generate_candidates(endpoint, [[WEATHER]], 2, 0.5, 1, max_tokens=64, temperature=0.0,
                                      log=lambda _m: None)
    assert rows == [] and stats["reasons"] == {"request failed": 2}

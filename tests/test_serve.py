"""The OpenAI-compatible server on a real loopback HTTP socket (no mock), and candidate generation through it.

A tiny model is trained here, in a few seconds, to answer three candidate-generation requests with three JSON
replies; the server then serves that checkpoint and the generator, speaking plain HTTP, must get three usable
candidates, which merge into the validation benchmark after review. The real `openai` client then reads chat
completions and completions from it, streamed and not, and they must equal `generate()` called directly."""

from __future__ import annotations

import copy
import http.client
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest
import torch

from agenttune.evaluate.candidates import Endpoint, candidate_request, generate_candidates, read_candidates, write_candidates
from agenttune.evaluate.generate import Generation, generate, generate_ids
from agenttune.evaluate.serve import Backend, make_server

KEY = "sk-test-0123456789abcdef"
WEATHER = {"name": "get_weather", "description": "Get the weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CITIES = ["Lima", "Quito", "Oslo"]


def reply_for(k: int) -> str:
    return json.dumps({"query": f"How is the weather in {CITIES[k]}?",
                       "call": {"name": "get_weather", "arguments": {"city": CITIES[k]}}})


def fitted_prompt(tok, k: int) -> str:
    """The k-th candidate request, chat-formatted: a prompt the tiny model was fitted on (its reply, then eos)."""
    messages, _, _ = candidate_request([[WEATHER]], k, 5, 0.0, [f"How is the weather in {c}?" for c in CITIES[:k]])
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


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
                                                        "stream": "yes"})[0] == 400
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


# --- the real openai client: streaming, /v1/completions, concurrency ---------------------------------------------

def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_streamed_chat_equals_the_non_streamed_answer(server):
    api = client(server)
    messages = [{"role": "user", "content": "Say something."}]
    whole = api.chat.completions.create(model="tiny-served", messages=messages, max_tokens=8)
    chunks = list(api.chat.completions.create(model="tiny-served", messages=messages, max_tokens=8, stream=True,
                                              stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *pieces, last, usage = chunks
    text = "".join(c.choices[0].delta.content or "" for c in pieces)
    assert text and text == whole.choices[0].message.content
    assert len(pieces) > 2  # the first (role) chunk and pieces of about a token
    assert all(c.choices[0].finish_reason is None for c in pieces)
    assert last.choices[0].delta.content is None and last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage == whole.usage


def test_streamed_tool_calls_equal_the_non_streamed_ones(server, monkeypatch):
    from agenttune.render import parse

    backend = server["backend"]
    tools = [{"type": "function", "function": WEATHER}]
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    api = client(server)
    # A tiny model seldom writes a valid call: the generation is fixed, the rendering, parsing and HTTP are real.
    call_text = 'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Oslo"}\n'
    assert parse("react", call_text).status == "call"
    seen = []

    def fixed(prompt, max_tokens, stops, prompt_ids=None):
        seen.append((prompt, stops))
        return Generation(call_text, 17, "stop", "Observation:")

    monkeypatch.setattr(backend, "_generate", fixed)
    whole = api.chat.completions.create(model="tiny-served", messages=messages, tools=tools, max_tokens=32)
    assert whole.choices[0].finish_reason == "tool_calls"
    calls = whole.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    chunks = list(api.chat.completions.create(model="tiny-served", messages=messages, tools=tools, max_tokens=32,
                                              stream=True))
    assert seen[0] == seen[1] and seen[0][1] == ("Observation:",) and "get_weather" in seen[0][0]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "tool_calls"
    streamed: dict[int, dict] = {}
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            entry = streamed.setdefault(d.index, {"id": None, "type": None, "name": "", "arguments": ""})
            entry["id"], entry["type"] = d.id or entry["id"], d.type or entry["type"]
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
    assert [streamed[k] for k in sorted(streamed)] == [
        {"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments} for c in calls]
    assert all(c.choices[0].delta.content is None for c in chunks)

    # An answer in the template comes back as content, streamed too.
    monkeypatch.setattr(backend, "_generate", lambda *a, **k: Generation("Thought: I know.\nFinal Answer: Sunny.",
                                                                          9, "eos"))
    whole = api.chat.completions.create(model="tiny-served", messages=messages, tools=tools, max_tokens=32)
    chunks = list(api.chat.completions.create(model="tiny-served", messages=messages, tools=tools, max_tokens=32,
                                              stream=True))
    assert whole.choices[0].message.content == "Sunny." and whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Sunny."
    assert chunks[-1].choices[0].finish_reason == "stop"


# (stops, max_tokens) -> how generate() ends on the first fitted prompt: at a stop string, at eos, at max_tokens.
COMPLETION_CASES = [(["Lima", "weather"], 64, "stop"), ([], 64, "eos"), (["Observation:"], 5, "length")]


@pytest.mark.parametrize("stops,max_tokens,kind", COMPLETION_CASES)
def test_completions_equal_generate_streamed_or_not(server, stops, max_tokens, kind):
    backend = server["backend"]
    prompt = fitted_prompt(backend.tokenizer, 0)
    (direct,) = generate(backend.model, backend.tokenizer, [prompt], max_tokens, [tuple(stops)], 1,
                         log=lambda _m: None)
    assert direct.finish_reason == kind
    api = client(server)
    whole = api.completions.create(model="tiny-served", prompt=prompt, max_tokens=max_tokens, stop=stops or None,
                                   temperature=0.0, extra_body={"add_special_tokens": False,
                                                                "skip_special_tokens": True})
    choice = whole.choices[0]
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert choice.text == direct.text and whole.usage.completion_tokens == direct.tokens
    assert whole.usage.prompt_tokens == len(backend.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert choice.finish_reason == ("length" if kind == "length" else "stop")
    # vLLM's stop_reason: the matched stop string, null for eos (and for length)
    assert choice.model_extra["stop_reason"] == {"stop": "weather", "eos": None, "length": None}[kind] == direct.stop
    if kind == "eos":
        assert choice.text == reply_for(0)

    chunks = list(api.completions.create(model="tiny-served", prompt=[prompt], max_tokens=max_tokens,
                                         stop=stops or None, stream=True, stream_options={"include_usage": True},
                                         extra_body={"add_special_tokens": False}))
    *pieces, last, usage = chunks
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in pieces + [last]) == choice.text and len(pieces) > 1
    assert all(c.choices[0].finish_reason is None for c in pieces)
    assert last.choices[0].finish_reason == choice.finish_reason
    assert last.choices[0].model_extra["stop_reason"] == choice.model_extra["stop_reason"]
    assert usage.choices == [] and usage.usage == whole.usage


def test_completions_add_special_tokens(server, monkeypatch):
    backend = server["backend"]
    prompt = fitted_prompt(backend.tokenizer, 1)
    # SmolLM2's tokenizer adds no special token: this one adds a BOS (as Llama's do), unless told not to.
    tok = copy.deepcopy(backend.tokenizer)
    tok.add_bos_token = True
    plain = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok(prompt)["input_ids"] == [tok.bos_token_id] + plain
    monkeypatch.setattr(backend, "tokenizer", tok)
    api = client(server)
    with_bos = api.completions.create(model="tiny-served", prompt=prompt, max_tokens=6, stop=["Quito"])
    as_is = api.completions.create(model="tiny-served", prompt=prompt, max_tokens=6, stop=["Quito"],
                                   extra_body={"add_special_tokens": False})
    assert with_bos.usage.prompt_tokens == len(plain) + 1 and as_is.usage.prompt_tokens == len(plain)
    (direct_bos,) = generate_ids(backend.model, tok, [[tok.bos_token_id] + plain], 6, [("Quito",)], 1)
    (direct,) = generate(backend.model, tok, [prompt], 6, [("Quito",)], 1, log=lambda _m: None)
    assert (with_bos.choices[0].text, with_bos.usage.completion_tokens) == (direct_bos.text, direct_bos.tokens)
    assert (as_is.choices[0].text, as_is.usage.completion_tokens) == (direct.text, direct.tokens)
    # generate_ids on the ids generate() makes of a string is generate() on that string
    assert generate_ids(backend.model, tok, [plain], 6, [("Quito",)], 1) == [direct]


def test_bad_completion_requests_are_refused_with_a_reason(server):
    api = client(server)
    prompt = "Hello"
    bad = [({"n": 2}, "only n = 1"), ({"echo": True}, "echo is not supported"),
           ({"max_tokens": 10 ** 6}, r"max_tokens must be an integer in 1\.\.1024"),
           ({"max_tokens": 0}, "max_tokens must be"), ({"logprobs": 2}, "logprobs are not supported"),
           ({"stop": [""]}, "'stop' must be"),
           ({"extra_body": {"skip_special_tokens": False}}, "skip_special_tokens = true"),
           ({"extra_body": {"add_special_tokens": "no"}}, "'add_special_tokens' must be")]
    for extra, message in bad:
        with pytest.raises(openai.BadRequestError, match=message) as err:
            api.completions.create(model="tiny-served", prompt=prompt, **{"max_tokens": 4, **extra})
        assert err.value.status_code == 400
    for shape in (["Hello", "again"], [1, 2, 3], [[1, 2]], ""):
        with pytest.raises(openai.BadRequestError, match="'prompt' must be a string|the prompt is empty"):
            api.completions.create(model="tiny-served", prompt=shape, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="only n = 1"):
        api.chat.completions.create(model="tiny-served", messages=[{"role": "user", "content": "x"}], n=2,
                                    stream=True)


def test_raw_event_stream_and_keep_alive(server):
    """The bytes on the wire: chunked server-sent events ending with [DONE], and the connection reusable after."""
    host, port = server["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    try:
        for path, body in [("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "stream": True}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                     "max_tokens": 4, "stream": True})]:
            conn.request("POST", path, json.dumps(body), headers)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
            assert resp.getheader("Transfer-Encoding") == "chunked" and resp.getheader("Content-Length") is None
            raw = resp.read().decode()
            events = raw.split("\n\n")
            assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: {") for e in events[:-2])
            assert not resp.will_close
        conn.request("GET", "/health")  # the same connection, after two streams
        assert json.loads(conn.getresponse().read()) == {"status": "ok"}
    finally:
        conn.close()


def test_concurrent_requests_are_queued_and_all_answered(server):
    from concurrent.futures import ThreadPoolExecutor

    backend = server["backend"]
    prompts = [fitted_prompt(backend.tokenizer, k) for k in range(3)] + ["Tell me about the weather."]
    expected = [generate(backend.model, backend.tokenizer, [p], 40, [("Oslo",)], 1, log=lambda _m: None)[0]
                for p in prompts]
    api = client(server)
    barrier = threading.Barrier(len(prompts))

    def ask(k: int) -> tuple[str, int]:
        barrier.wait(timeout=60)
        kwargs = dict(model="tiny-served", prompt=prompts[k], max_tokens=40, stop="Oslo",
                      extra_body={"add_special_tokens": False})
        if k % 2:  # half of them streamed
            chunks = list(api.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
            return "".join(c.choices[0].text for c in chunks[:-1]), chunks[-1].usage.completion_tokens
        whole = api.completions.create(**kwargs)
        return whole.choices[0].text, whole.usage.completion_tokens

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    assert answers == [(g.text, g.tokens) for g in expected]
    assert expected[2].finish_reason == "stop" and expected[0].finish_reason == "eos"

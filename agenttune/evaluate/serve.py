"""A minimal OpenAI-compatible HTTP server for a base model or checkpoint, on loopback, for trying a tuned model, for
pointing OpenAI-compatible tools (such as candidate generation) at it, and as the `server` evaluation engine's
endpoint (agenttune.evaluate.server_engine).

    python -m agenttune.evaluate.serve results/demo/checkpoints/epoch-2 --port 8000 [--template react] [--api-key-env VAR]

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (`GET /health` for scripts).
Decoding is greedy with agenttune.evaluate.generate (`temperature`/`top_p` are accepted and ignored; `n > 1`,
`logprobs` and, on /v1/completions, `echo`, `best_of` and `suffix` are refused with 400). One generation runs at a time: concurrent requests (the
server answers each on its own thread) queue on a lock and are all answered.

`/v1/chat/completions`: requests with `tools` are rendered in the prompt template the model was tuned on
(`--template`, `--tool-format`, and `--chat-template-tools`: the model's format.chat_template_tools, auto or builtin):
the OpenAI messages (system, user, assistant `tool_calls`, `role: tool` results) become a canonical trace, the
template writes the prompt, generation stops at the template's stop strings, and the output is parsed back: a call
comes back as `tool_calls` (finish_reason "tool_calls"), an answer as `content`, and a malformed call attempt as
`content` holding the raw text (finish_reason "stop"), so a client can see what the model wrote. Requests without
tools go through the model's own chat template and return the generated text.

`/v1/completions`: a prompt string (or a list of one) continued as is: its text is exactly what
`generate(model, tokenizer, [prompt], max_tokens, [stops], 1)` gives (the server engine's predictions equal the
local engine's). vLLM's extra parameters: `add_special_tokens` (default true: the tokenizer's special tokens, such as
a BOS, are added to the prompt; false: the text is tokenized as is, for prompts already chat-formatted) and
`skip_special_tokens` (only true). `max_tokens` defaults to 16 as in the OpenAI API. Each choice carries vLLM's
`stop_reason`: the stop string matched (finish_reason "stop"), or null when the model ended with its end-of-sequence
token (finish_reason "stop" too) or hit `max_tokens` (finish_reason "length"), so a client can tell eos from a stop.

`stream: true` (both endpoints) answers with server-sent events as the OpenAI API does (`text/event-stream`,
`Transfer-Encoding: chunked`): `data: {chunk}` events (`chat.completion.chunk`: a first delta with the role, then
content deltas or one `tool_calls` delta per call, then an empty delta with finish_reason; `text_completion`: text
pieces, then one with finish_reason and stop_reason), a usage chunk (empty `choices`) when
`stream_options.include_usage`, then `data: [DONE]`. The whole output is generated first (a tool call is known only
once the template's parser has read it) and then sent in pieces of about one token; the pieces concatenate to the
non-streamed text.

Only loopback addresses are served unless `--allow-remote` is given: this is a tool for one machine, without TLS.
With `--api-key-env VAR`, requests must carry `Authorization: Bearer $VAR`; the key is never logged.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 8 << 20


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def openai_to_trace(messages: list, tools: list) -> dict:
    """OpenAI chat messages and tools -> a canonical trace (for rendering in a template)."""
    canon_tools = []
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(400, f"tools[{k}]: expected {{type: function, function: {{name, ...}}}}")
        canon_tools.append({"name": fn["name"], "description": fn.get("description", ""),
                            "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    names_by_call_id: dict[str, str] = {}
    out = []
    for k, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content") or ""
        if not isinstance(content, str):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content})
        elif role == "user":
            out.append({"role": "user", "content": content})
        elif role == "assistant":
            calls = []
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                args = fn.get("arguments") or "{}"
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except json.JSONDecodeError:
                    raise RequestError(400, f"messages[{k}]: tool call arguments are not JSON") from None
                names_by_call_id[call.get("id", "")] = fn.get("name", "")
                calls.append({"name": fn.get("name", ""), "arguments": args})
            out.append({"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})})
        elif role in ("tool", "function"):
            name = msg.get("name") or names_by_call_id.get(msg.get("tool_call_id", ""), "")
            out.append({"role": "tool", "name": name, "content": content})
        else:
            raise RequestError(400, f"messages[{k}]: unknown role {role!r}")
    return {"id": "request", "source": "serve", "tools": canon_tools, "messages": out, "meta": {}}


def chat_template_tools_choices() -> list[str]:
    """format.chat_template_tools' values, from the schema."""
    from agenttune.common.config import section_schema

    return section_schema("format")["properties"]["chat_template_tools"]["enum"]


def chat_template_tools_setting(value: str | None) -> str:
    """format.chat_template_tools for serving: `value`, or the schema's default when None; an unknown value is an
    error naming --chat-template-tools."""
    from agenttune.common.config import section_with_defaults

    if value is None:
        return section_with_defaults({}, "format")["chat_template_tools"]
    known = chat_template_tools_choices()
    if value not in known:
        raise ValueError(f"--chat-template-tools {value!r}: expected one of {', '.join(known)} (the model's "
                         "format.chat_template_tools)")
    return value


class Backend:
    """The model and how requests become prompts and outputs become responses. One generation at a time."""

    def __init__(self, model_dir, template: str = "react", tool_format: str = "json_schema", name: str | None = None,
                 max_tokens_limit: int = 1024, log=print, precision: str = "bf16",
                 chat_template_tools: str | None = None):
        from agenttune.evaluate.generate import load_for_generation
        from agenttune.render.samples import make_renderers

        # bf16 on a GPU (the paper models' dtype; the job's GPUs share the layers), fp32 on CPU.
        self.model, self.tokenizer = load_for_generation(model_dir, precision, log=log)
        self.name = name or os.path.basename(os.path.normpath(str(model_dir)))
        self.template, self.tool_format = template, tool_format
        # How tool prompts are written: as the model was trained (format.chat_template_tools; schema default if None).
        self.chat_template_tools = chat_template_tools_setting(chat_template_tools)
        self.renderers = make_renderers(self.tokenizer, self.chat_template_tools, log=log)
        self.family_text = None  # a family template's renderer for this tokenizer, made at the first tool request
        self.max_tokens_limit = max_tokens_limit
        # One request at a time, from its checks to its stream's chunks: generation, and the tokenizer too (a fast
        # tokenizer used from two threads at once can fail with "Already borrowed").
        self.lock = threading.Lock()
        self.log = log

    def respond(self, route: str, body: dict) -> tuple[dict, list[dict] | None]:
        """The response to a request on `route` ("chat" or "completions") and, for `stream: true`, its chunks."""
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise RequestError(400, "'stream' must be true or false")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object")
        with self.lock:
            if route == "chat":
                response = self.complete(body)
                chunks = self.chat_chunks(response, bool(options.get("include_usage"))) if stream else None
            else:
                response = self.completion(body)
                chunks = self.completion_chunks(response, bool(options.get("include_usage"))) if stream else None
        return response, chunks

    def _generate(self, prompt: str, max_tokens: int, stops: tuple, prompt_ids: list[int] | None = None):
        """One greedy generation: of `prompt` as `generate` tokenizes it, or of `prompt_ids` when given."""
        from agenttune.evaluate.generate import generate, generate_ids

        if prompt_ids is None:
            (g,) = generate(self.model, self.tokenizer, [prompt], max_tokens, [stops], 1, log=lambda _m: None)
        else:
            (g,) = generate_ids(self.model, self.tokenizer, [prompt_ids], max_tokens, [stops], 1)
        return g

    def _max_tokens(self, value, default: int) -> int:
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.max_tokens_limit:
            raise RequestError(400, f"max_tokens must be an integer in 1..{self.max_tokens_limit} (the server's "
                                    f"--max-tokens-limit), got {value!r}")
        return value

    def prompt(self, body: dict) -> tuple[str, tuple[str, ...], bool]:
        """(prompt text, stop strings, whether the template's parser reads the output)."""
        from agenttune.render import FAMILIES, get_template
        from agenttune.render.families import FamilyText

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list")
        tools = body.get("tools") or []
        if not tools:
            chat = []
            for k, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    raise RequestError(400, f"messages[{k}]: expected a system, user or assistant message")
                chat.append({"role": m["role"], "content": m.get("content") or ""})
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), (), False
        trace = openai_to_trace(messages, tools)
        # A placeholder answer makes templates flush pending tool results into the prompt; it is cut off again.
        trace["messages"].append({"role": "assistant", "content": ""})
        rendered = self.renderers[self.template](trace, self.tool_format)[0]
        last = max(i for i, m in enumerate(rendered) if m["role"] == "assistant")
        if self.template in FAMILIES:  # the family's own format, through the same path as its training text
            if self.family_text is None:
                self.family_text = FamilyText.from_tokenizer(FAMILIES[self.template], self.tokenizer,
                                                             self.chat_template_tools, self.log)
            text = self.family_text.prompt(rendered[:last], trace["tools"])
            return text, tuple(get_template(self.template).STOP), True
        chat = [{"role": m["role"], "content": m["content"]} for m in rendered[:last]]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return text, tuple(get_template(self.template).STOP), True

    def complete(self, body: dict) -> dict:
        """A `chat.completion` for a /v1/chat/completions request (not streamed; `respond` makes the chunks)."""
        from agenttune.render import parse

        _check_n(body)
        if body.get("logprobs"):
            raise RequestError(400, "logprobs are not supported")
        max_tokens = self._max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"), 256)
        stop = _stops(body)
        prompt, template_stops, parsed_output = self.prompt(body)
        g = self._generate(prompt, max_tokens, template_stops + stop)
        message: dict = {"role": "assistant", "content": g.text}
        finish = "length" if g.finish_reason == "length" else "stop"
        if parsed_output:
            result = parse(self.template, g.text)
            if result.status == "call":
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": f"call_{k}", "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, str)
                                  else json.dumps(c.arguments, ensure_ascii=False)}}
                    for k, c in enumerate(result.calls)]}
                finish = "tool_calls"
            elif result.status == "answer":
                message["content"] = result.final_answer
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        digest = hashlib.sha256(f"{prompt}\x1f{g.text}".encode()).hexdigest()[:24]
        return {"id": f"chatcmpl-{digest}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": g.tokens,
                          "total_tokens": prompt_tokens + g.tokens}}

    def completion(self, body: dict) -> dict:
        """A `text_completion` for a /v1/completions request (not streamed; `respond` makes the chunks)."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string or a list of one string (token ids and several "
                                    "prompts per request are not supported)")
        _check_n(body)
        if body.get("echo"):
            raise RequestError(400, "echo is not supported (it must be false)")
        if body.get("logprobs") is not None:
            raise RequestError(400, "logprobs are not supported")
        if body.get("best_of") not in (None, 1):
            raise RequestError(400, "only best_of = 1 is supported")
        if body.get("suffix"):
            raise RequestError(400, "suffix is not supported")
        if body.get("skip_special_tokens", True) is not True:
            raise RequestError(400, "only skip_special_tokens = true is supported")
        add_special = body.get("add_special_tokens", True)
        if not isinstance(add_special, bool):
            raise RequestError(400, "'add_special_tokens' must be true or false")
        max_tokens = self._max_tokens(body.get("max_tokens"), 16)
        stop = _stops(body)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids_to_run = None
        if add_special:
            with_special = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            if with_special != ids:
                ids = ids_to_run = with_special
        if not ids:
            raise RequestError(400, "the prompt is empty (no tokens)")
        g = self._generate(prompt, max_tokens, stop, ids_to_run)
        finish = "length" if g.finish_reason == "length" else "stop"
        stop_reason = g.stop if g.finish_reason == "stop" else None
        digest = hashlib.sha256(f"{prompt}\x1f{g.text}".encode()).hexdigest()[:24]
        return {"id": f"cmpl-{digest}", "object": "text_completion", "created": int(time.time()), "model": self.name,
                "choices": [{"index": 0, "text": g.text, "logprobs": None, "finish_reason": finish,
                             "stop_reason": stop_reason}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": g.tokens,
                          "total_tokens": len(ids) + g.tokens}}

    def pieces(self, text: str) -> list[str]:
        """`text` cut into pieces of about one token each (for streaming), which concatenate to `text` exactly:
        `text` re-tokenized and decoded prefix by prefix (a piece waits while it ends in half a character);
        `[text]` when that does not give back `text`, `[]` for an empty text."""
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out, done = [], ""
        for k in range(1, len(ids) + 1):
            now = self.tokenizer.decode(ids[:k])
            if (now.endswith("\ufffd") and k < len(ids)) or not now.startswith(done) or len(now) == len(done):
                continue
            out.append(now[len(done):])
            done = now
        return out if done == text else [text]

    def chat_chunks(self, response: dict, include_usage: bool) -> list[dict]:
        """The `chat.completion.chunk`s of a chat completion, as the OpenAI API streams them."""
        head = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
                "model": response["model"], **({"usage": None} if include_usage else {})}
        choice = response["choices"][0]
        message = choice["message"]

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if message.get("tool_calls"):
            chunks = [chunk({"role": "assistant", "content": None})]
            chunks += [chunk({"tool_calls": [{"index": k, **call}]}) for k, call in enumerate(message["tool_calls"])]
        else:
            chunks = [chunk({"role": "assistant", "content": ""})]
            chunks += [chunk({"content": piece}) for piece in self.pieces(message["content"] or "")]
        chunks.append(chunk({}, choice["finish_reason"]))
        if include_usage:
            chunks.append({**head, "choices": [], "usage": response["usage"]})
        return chunks

    def completion_chunks(self, response: dict, include_usage: bool) -> list[dict]:
        """The `text_completion` chunks of a completion (as the OpenAI API and vLLM stream them)."""
        head = {"id": response["id"], "object": "text_completion", "created": response["created"],
                "model": response["model"], **({"usage": None} if include_usage else {})}
        choice = response["choices"][0]

        def chunk(text: str, finish: str | None = None, stop_reason: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                                         "stop_reason": stop_reason}]}

        chunks = [chunk(piece) for piece in self.pieces(choice["text"])]
        chunks.append(chunk("", choice["finish_reason"], choice["stop_reason"]))
        if include_usage:
            chunks.append({**head, "choices": [], "usage": response["usage"]})
        return chunks


def _check_n(body: dict) -> None:
    if body.get("n", 1) not in (None, 1):
        raise RequestError(400, "only n = 1 is supported")


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a non-empty string or a list of non-empty strings")
    return tuple(stop)


ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def _handler(backend: Backend, api_key: str | None, log):
    class Handler(BaseHTTPRequestHandler):
        server_version = "agenttune-serve"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # request line and status only; never headers (they hold the key)
            log(f"{self.address_string()} {fmt % args}")

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_events(self, chunks: list[dict]) -> None:
            """Server-sent events, one `data:` line per chunk, then `data: [DONE]`, in HTTP/1.1 chunked encoding
            (the connection stays usable for the next request)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for data in [json.dumps(c, ensure_ascii=False) for c in chunks] + ["[DONE]"]:
                    event = f"data: {data}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (after [DONE], say)
                self.close_connection = True

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind}})

        def _authorised(self) -> bool:
            if not api_key:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return True
            self._error(401, "missing or wrong API key", "authentication_error")
            return False

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                return self._send(200, {"status": "ok"})
            if not self._authorised():
                return None
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [
                    {"id": backend.name, "object": "model", "created": 0, "owned_by": "agenttune"}]})
            return self._error(404, f"no route {self.path}", "not_found_error")

        def do_POST(self):
            if not self._authorised():
                return None
            route = ROUTES.get(self.path.rstrip("/"))
            if route is None:
                return self._error(404, f"no route {self.path}", "not_found_error")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._error(413, f"request body over {MAX_BODY} bytes")
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                if not isinstance(body, dict):
                    raise RequestError(400, "the request body must be a JSON object")
                response, chunks = backend.respond(route, body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return self._error(400, f"the request body is not JSON: {exc}")
            except RequestError as exc:
                return self._error(exc.status, exc.message, exc.kind)
            except Exception as exc:  # noqa: BLE001 - a server answers, it does not die
                log(f"error: {type(exc).__name__}: {exc}")
                return self._error(500, f"{type(exc).__name__}: {exc}", "server_error")
            return self._send(200, response) if chunks is None else self._send_events(chunks)

    return Handler


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    """A thread per connection; a listen backlog for a client's bounded burst of concurrent requests."""

    daemon_threads = True
    request_queue_size = 64


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                allow_remote: bool = False, log=print) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port; see `server.server_address`). Call serve_forever()."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"{host} is not a loopback address; pass allow_remote=True (--allow-remote) to serve it")
    return _Server((host, port), _handler(backend, api_key, log))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agenttune.evaluate.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an HF model folder: results/models/<name> or results/<run>/checkpoints/epoch-N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--template", default="react", help="prompt template the model was tuned on (for tools)")
    parser.add_argument("--tool-format", default="json_schema", help="tool-description format (for tools)")
    parser.add_argument("--chat-template-tools", choices=chat_template_tools_choices(),
                        help="the format.chat_template_tools the model was trained with (default: the schema's): "
                             "builtin serves tool_call and family templates with the project's own tool prompt")
    parser.add_argument("--name", help="model name reported by /v1/models (default: the folder name)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 takes effect on a GPU only (CPU serves fp32)")
    parser.add_argument("--api-key-env", help="require 'Authorization: Bearer $VAR'")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"--api-key-env {args.api_key_env}: that variable is not set")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    backend = Backend(args.model_dir, args.template, args.tool_format, args.name, args.max_tokens_limit, log,
                      args.precision, args.chat_template_tools)
    server = make_server(backend, args.host, args.port, api_key, args.allow_remote, log)
    host, port = server.server_address[:2]
    log(f"serving {backend.name} on http://{host}:{port}/v1 (template {args.template}, "
        f"API key {'required' if api_key else 'not required'})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

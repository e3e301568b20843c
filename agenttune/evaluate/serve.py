"""A minimal OpenAI-compatible HTTP server for a base model or checkpoint, on loopback, for trying a tuned model and
for pointing OpenAI-compatible tools (such as candidate generation) at it.

    python -m agenttune.evaluate.serve results/demo/checkpoints/epoch-2 --port 8000 [--template react] [--api-key-env VAR]

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (`GET /health` for scripts). Decoding is greedy with the
batch-invariant engine of agenttune.evaluate.generate (one request at a time); `temperature`/`top_p` are accepted and ignored,
`n > 1` and `stream: true` are refused.

Requests with `tools` are rendered in the prompt template the model was tuned on (`--template`, `--tool-format`):
the OpenAI messages (system, user, assistant `tool_calls`, `role: tool` results) become a canonical trace, the
template writes the prompt, generation stops at the template's stop strings, and the output is parsed back: a call
comes back as `tool_calls` (finish_reason "tool_calls"), an answer as `content`, and a malformed call attempt as
`content` holding the raw text (finish_reason "stop"), so a client can see what the model wrote. Requests without
tools go through the model's own chat template and return the generated text.

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


class Backend:
    """The model and how requests become prompts and outputs become responses. One generation at a time."""

    def __init__(self, model_dir, template: str = "react", tool_format: str = "json_schema", name: str | None = None,
                 max_tokens_limit: int = 1024, log=print):
        from agenttune.evaluate.generate import load_for_generation
        from agenttune.render.samples import make_renderers

        self.model, self.tokenizer = load_for_generation(model_dir, log=log)
        self.name = name or os.path.basename(os.path.normpath(str(model_dir)))
        self.template, self.tool_format = template, tool_format
        self.renderers = make_renderers(self.tokenizer, log=log)
        self.max_tokens_limit = max_tokens_limit
        self.lock = threading.Lock()
        self.log = log

    def prompt(self, body: dict) -> tuple[str, tuple[str, ...], bool]:
        """(prompt text, stop strings, whether the template's parser reads the output)."""
        from agenttune.render import get_template

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
        rendered, _ = self.renderers[self.template](trace, self.tool_format)
        last = max(i for i, m in enumerate(rendered) if m["role"] == "assistant")
        chat = [{"role": m["role"], "content": m["content"]} for m in rendered[:last]]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return text, tuple(get_template(self.template).STOP), True

    def complete(self, body: dict) -> dict:
        from agenttune.evaluate.generate import generate
        from agenttune.render import parse

        if body.get("stream"):
            raise RequestError(400, "streaming is not supported")
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n = 1 is supported")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.max_tokens_limit:
            raise RequestError(400, f"max_tokens must be an integer in 1..{self.max_tokens_limit}")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        prompt, template_stops, parsed_output = self.prompt(body)
        with self.lock:
            (g,) = generate(self.model, self.tokenizer, [prompt], max_tokens, [template_stops + tuple(stop)], 1,
                            log=lambda _m: None)
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
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}", "not_found_error")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._error(413, f"request body over {MAX_BODY} bytes")
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                if not isinstance(body, dict):
                    raise RequestError(400, "the request body must be a JSON object")
                return self._send(200, backend.complete(body))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return self._error(400, f"the request body is not JSON: {exc}")
            except RequestError as exc:
                return self._error(exc.status, exc.message, exc.kind)
            except Exception as exc:  # noqa: BLE001 - a server answers, it does not die
                log(f"error: {type(exc).__name__}: {exc}")
                return self._error(500, f"{type(exc).__name__}: {exc}", "server_error")

    return Handler


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                allow_remote: bool = False, log=print) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port; see `server.server_address`). Call serve_forever()."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"{host} is not a loopback address; pass allow_remote=True (--allow-remote) to serve it")
    server = ThreadingHTTPServer((host, port), _handler(backend, api_key, log))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agenttune.evaluate.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an HF model folder: results/models/<name> or results/<run>/checkpoints/epoch-N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--template", default="react", help="prompt template the model was tuned on (for tools)")
    parser.add_argument("--tool-format", default="json_schema", help="tool-description format (for tools)")
    parser.add_argument("--name", help="model name reported by /v1/models (default: the folder name)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024)
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

    backend = Backend(args.model_dir, args.template, args.tool_format, args.name, args.max_tokens_limit, log)
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

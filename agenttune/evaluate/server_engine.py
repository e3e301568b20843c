"""Evaluate stage, the `server` engine: generation by an OpenAI-compatible server that the job starts on the model.

Takes: a model folder, the exact prompt texts and stop strings the other engines get (predict.prompts_and_stops),
and `evaluate.server` (the command, timeouts, concurrency). Gives: one `Generation` per prompt, in prompt order,
like agenttune.evaluate.generate.generate.

The job
1. starts `evaluate.server.command` (on a GPU cluster `vllm serve {model} --tensor-parallel-size {gpus} ...` from the
   vLLM env, envs/serve-vllm.yaml; in the tests, the project's own `python -m agenttune.evaluate.serve`) in a new
   process group, its output going to the job's log folder;
2. waits until `GET /v1/models` answers (or the process exits, or `ready_timeout_s` passes: an error quoting the
   end of the server's log);
3. sends every prompt text to `POST /v1/completions`, greedily (`temperature: 0`), with the template's stop strings,
   `max_tokens` = evaluate.max_new_tokens and `add_special_tokens: false` (the text is already chat-formatted: a
   second BOS would change the prompt), `concurrency` requests at a time;
4. stops the server by its process group (SIGTERM, then SIGKILL after a grace period), also when anything fails.
The server listens on loopback only; a server started with an API key gets it from $AGENTTUNE_SERVER_API_KEY
(sent as `Authorization: Bearer`; never written to a log).

How a reply maps to a `Generation`: `text` as returned (the server cuts before the stop string, as the local
engines do); `tokens` = usage.completion_tokens; finish "length" when `finish_reason` is "length", else "stop"
when `stop_reason` names a stop string and "eos" when it is null (vLLM's convention, which the project's server
follows). Outputs equal the `exact` engine's when the server decodes greedily in the same dtype (the tests check it
with the project's server on CPU); a vLLM server batches requests, so like the `hf` engine it is equal to one-by-one
decoding only up to float rounding.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agenttune.evaluate.generate import Generation

# What `evaluate.server.command` may name; anything else is a config error.
PLACEHOLDERS = {"model": "the model folder (absolute path)", "port": "a free loopback port",
                "host": "127.0.0.1", "gpus": "GPUs this job sees (at least 1)",
                "dtype": "bfloat16 or float32, from evaluate.precision and the device", "seed": "the run's seed",
                "python": "this job's Python interpreter"}
STOP_GRACE_S = 30


class ServerError(RuntimeError):
    pass


def check_command(command: str) -> list[str]:
    """The placeholders of `evaluate.server.command`; unknown ones are an error naming the key."""
    names = [field for _, field, _, _ in string.Formatter().parse(command) if field is not None]
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"evaluate.server.command: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}"
                         f"; known: {', '.join('{' + k + '}' for k in PLACEHOLDERS)}")
    if "model" not in names or "port" not in names:
        raise ValueError("evaluate.server.command: must name {model} and {port} (the server serves that folder on "
                         "that port)")
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # a server env without torch in this interpreter
        return 0


def server_argv(command: str, model_dir, port: int, precision: str, seed: int) -> tuple[list[str], dict]:
    """The server's argv (placeholders filled per argument after splitting, so a path with spaces stays one
    argument) and the values used."""
    check_command(command)
    gpus = visible_gpus()
    values = {"model": str(Path(model_dir).resolve()), "port": port, "host": "127.0.0.1", "gpus": max(1, gpus),
              "dtype": "bfloat16" if (precision == "bf16" and gpus) else "float32", "seed": seed,
              "python": sys.executable}
    return [part.format(**values) for part in shlex.split(command)], values


def _request(url: str, body: dict | None, timeout: float) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    key = os.environ.get("AGENTTUNE_SERVER_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read().decode())


class ServerProcess:
    """The server as a context manager: started on enter (ready when `/v1/models` answers), stopped on exit."""

    def __init__(self, argv: list[str], port: int, log_path: str | Path, ready_timeout_s: float, log=print,
                 served_name: str | None = None):
        self.argv, self.port, self.log_path = argv, port, Path(log_path)
        self.ready_timeout_s, self.log = ready_timeout_s, log
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None
        self.model_name: str | None = None
        # A LoRA adapter served beside its base (vLLM --lora-modules NAME=PATH): requests name the adapter.
        self.served_name = served_name

    def __enter__(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"server: {shlex.join(self.argv)} (log {self.log_path})")
        out = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except FileNotFoundError as exc:
            raise ServerError(f"evaluate.server.command: cannot start {self.argv[0]!r} ({exc}); is the server's "
                              "env active (envs/serve-vllm.yaml for vllm)?") from None
        finally:
            out.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with code {self.proc.returncode} before answering; the end of "
                                  f"its log ({self.log_path}):\n{self.log_tail()}")
            try:
                models = _request(f"{self.base_url}/models", None, timeout=5)
                ids = [m["id"] for m in models["data"]]
                if self.served_name is not None and self.served_name not in ids:
                    raise ServerError(f"the server does not list the adapter {self.served_name!r} (it lists "
                                      f"{', '.join(ids)}); the end of its log ({self.log_path}):\n{self.log_tail()}")
                self.model_name = self.served_name or ids[0]
                self.log(f"server ready after {time.monotonic() - start:.1f} s, model {self.model_name!r}")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, KeyError, IndexError,
                    json.JSONDecodeError):
                pass
            if time.monotonic() - start > self.ready_timeout_s:
                raise ServerError(f"the server did not answer within evaluate.server.ready_timeout_s = "
                                  f"{self.ready_timeout_s} s; the end of its log ({self.log_path}):\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group (vLLM starts worker processes), SIGKILL after a grace period."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log(f"server stopped (exit code {self.proc.returncode})")

    def __exit__(self, *exc) -> None:
        self.stop()

    def complete(self, prompt: str, stops: tuple, max_new_tokens: int, timeout: float) -> Generation:
        body = {"model": self.model_name, "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0,
                "top_p": 1.0, "n": 1, "stop": list(stops), "add_special_tokens": False,
                "skip_special_tokens": True}
        try:
            reply = _request(f"{self.base_url}/completions", body, timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ServerError(f"the server answered {exc.code} to a completion request: {detail}") from None
        choice = reply["choices"][0]
        if choice.get("finish_reason") == "length":
            finish = "length"
        else:
            finish = "eos" if choice.get("stop_reason") is None else "stop"
        stop = choice.get("stop_reason") if finish == "stop" else None
        return Generation(choice["text"], int(reply["usage"]["completion_tokens"]), finish,
                          stop if isinstance(stop, str) else None)


def generate_all(server: ServerProcess, prompts: list[str], stops: list[tuple], max_new_tokens: int,
                 concurrency: int, request_timeout_s: float, log=print) -> list[Generation]:
    """Every prompt through a running server, `concurrency` requests in flight; results in prompt order. The first
    failed request fails the call (the requests not yet sent are cancelled)."""
    results: list[Generation | None] = [None] * len(prompts)
    step = max(1, len(prompts) // 8)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(server.complete, p, s, max_new_tokens, request_timeout_s): i
                   for i, (p, s) in enumerate(zip(prompts, stops))}
        done = 0
        try:
            for future in futures:  # in submission order
                results[futures[future]] = future.result()
                done += 1
                if done % step == 0 or done == len(prompts):
                    log(f"generated {done}/{len(prompts)}")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def generate_with_server(model_dir, prompts: list[str], stops: list[tuple], max_new_tokens: int, server_cfg: dict,
                         precision: str, seed: int, log_path, log=print) -> tuple[list[Generation], dict]:
    """Start the server on `model_dir`, generate for every prompt, stop the server. Returns the generations in
    prompt order and how they were made (for predict.json)."""
    from agenttune.train.checkpoint import resolve_model

    port = free_port()
    source = resolve_model(model_dir)
    served_name, weights = None, source.describe()
    if source.kind == "adapter" and is_vllm(server_cfg["command"]):
        argv, values = server_argv(server_cfg["command"], source.weights_dir, port, precision, seed)
        served_name = adapter_name(model_dir)
        argv += vllm_lora_arguments(source, served_name)
        weights["adapter_merged_in_memory"] = False  # vLLM applies the adapter per request
    else:
        # A merged epoch is served from merged/; the project's own server loads base + adapter itself.
        served = source.weights_dir if source.kind == "merged" else model_dir
        argv, values = server_argv(server_cfg["command"], served, port, precision, seed)
    with ServerProcess(argv, port, log_path, server_cfg["ready_timeout_s"], log, served_name) as server:
        results = generate_all(server, prompts, stops, max_new_tokens, server_cfg["concurrency"],
                               server_cfg["request_timeout_s"], log)
        info = {"engine": "server", "server_command": server_cfg["command"], "served_model": server.model_name,
                "dtype": "bf16" if values["dtype"] == "bfloat16" else "fp32", "gpus": values["gpus"], **weights}
    return results, info


def is_vllm(command: str) -> bool:
    """Whether `evaluate.server.command` starts vLLM (`vllm serve ...`, `python -m vllm.entrypoints...`)."""
    return any(Path(part).name == "vllm" or part.startswith("vllm.") for part in shlex.split(command))


def adapter_name(model_dir) -> str:
    """The name an epoch's adapter is served under: its folder name (epoch-2)."""
    return Path(model_dir).resolve().name


def vllm_lora_arguments(source, name: str) -> list[str]:
    """vLLM's arguments to serve an unmerged adapter beside its base: --enable-lora, --lora-modules NAME=PATH,
    --max-lora-rank (vLLM refuses an adapter whose rank exceeds it, and accepts only the values of its
    vllm/config/lora.py MaxLoRARanks: the rank is rounded up to one of those); a QLoRA base is loaded in 4 bits by
    vLLM's bitsandbytes support."""
    rank = int(source.lora["rank"]) if source.lora else 16
    allowed = [1, 8, 16, 32, 64, 128, 256, 320, 512]
    max_rank = next((r for r in allowed if r >= rank), rank)
    args = ["--enable-lora", "--lora-modules", f"{name}={Path(source.adapter_dir).resolve()}",
            "--max-lora-rank", str(max_rank)]
    if source.tuning == "qlora":
        args += ["--quantization", "bitsandbytes"]
    return args

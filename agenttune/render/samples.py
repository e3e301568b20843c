"""Canonical traces -> samples: which templates and tool format a trace is rendered in, and the sample itself.

Takes: a canonical trace (docs/trace-schema.md), the `format.templates` / `format.tool_formats` weights, a seed,
and optionally the model's tokenizer (for the `tool_call` template's own tool prompt).
Gives: `choose_templates` / `choose_tool_format` (drawn from a hash of seed and trace id, so the data stage and
evaluation draw the same ones), `make_renderers` (template name -> renderer) and `render_trace` (one trace in one
template and tool format, as a sample: the contract in agenttune.render). The data stage (agenttune.data.format)
and evaluation (agenttune.evaluate.items, agenttune.evaluate.serve) both render through here.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from agenttune.common.config import section_with_defaults
from agenttune.render import TEMPLATES, get_template, passthrough, tool_call

# --- deterministic choices ------------------------------------------------------------------------------------


def unit_interval(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts (independent of process and order)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _weighted_choice(weights: dict[str, float], u: float) -> str:
    names = sorted(k for k, w in weights.items() if w > 0)
    total = sum(weights[k] for k in names)
    acc = 0.0
    for name in names:
        acc += weights[name] / total
        if u < acc:
            return name
    return names[-1]


def choose_templates(trace_id: str, weights: dict[str, float], count: int, seed: int) -> list[str]:
    """`count` distinct templates for one trace, drawn by weight without replacement (sorted by name)."""
    remaining = {k: w for k, w in weights.items() if w > 0}
    chosen = []
    for k in range(min(count, len(remaining))):
        name = _weighted_choice(remaining, unit_interval("template", seed, trace_id, k))
        chosen.append(name)
        del remaining[name]
    return sorted(chosen)


def choose_tool_format(trace_id: str, template: str, weights: dict[str, float], seed: int) -> str:
    return _weighted_choice(weights, unit_interval("tool_format", seed, trace_id, template))


# --- samples ----------------------------------------------------------------------------------------------------

Renderer = Callable[[dict, str], "tuple[list[dict], str]"]


def make_renderers(tokenizer=None, chat_template_tools: str | None = None, log=print) -> dict[str, Renderer]:
    """Template name -> render(trace, tool_format) -> (messages, tool format actually used).
    `chat_template_tools` defaults to the schema's `format.chat_template_tools`.

    `tool_call` uses the tokenizer's own tool prompt when `chat_template_tools` is "auto" and the tokenizer's chat
    template handles `tools=` in the Hermes style; otherwise it writes Qwen2.5's tool prompt into the system turn."""
    chat_template_tools = chat_template_tools or section_with_defaults({}, "format")["chat_template_tools"]
    renderers: dict[str, Renderer] = {name: _plain(module) for name, module in TEMPLATES.items()}
    builder = tool_call.native_system(tokenizer) if tokenizer is not None and chat_template_tools == "auto" else None
    if builder is not None:
        log("tool_call: the model's chat template handles tools=; its own tool prompt is used")
        renderers["tool_call"] = lambda trace, fmt: (tool_call.render(trace, fmt, builder), tool_call.NATIVE_TOOL_FORMAT)
    elif tokenizer is not None and chat_template_tools == "auto":
        log("tool_call: the model's chat template does not handle tools=; Hermes/Qwen-style tool instructions are "
            "written into the system prompt instead")
    return renderers


def _plain(module) -> Renderer:
    return lambda trace, fmt: (module.render(trace, fmt), fmt)


def trace_kind(trace: dict) -> str:
    """"tool" or "no_tool": the trace's `meta.kind` when it says, else whether any message calls a tool."""
    meta = trace.get("meta") or {}
    if meta.get("kind") in ("tool", "no_tool"):
        return meta["kind"]
    return "tool" if any(m.get("tool_calls") for m in trace["messages"]) else "no_tool"


def _sample(trace: dict, template: str, tool_format: str, messages: list[dict]) -> dict:
    meta = trace.get("meta") or {}
    return {
        "id": f"{trace['id']}#{template}",
        "trace_id": trace["id"],
        "source": trace["source"],
        "kind": trace_kind(trace),
        "task": meta.get("task", ""),
        "template": template,
        "tool_format": tool_format,
        "messages": messages,
    }


def render_trace(trace: dict, template: str, tool_format: str, renderers: dict[str, Renderer] | None = None) -> dict:
    """One trace in one template and tool format, as a sample."""
    if template == passthrough.NAME:
        return _sample(trace, template, passthrough.TOOL_FORMAT, passthrough.render(trace))
    if renderers is not None:
        messages, used = renderers[template](trace, tool_format)
    else:
        messages, used = get_template(template).render(trace, tool_format), tool_format
    return _sample(trace, template, used, messages)

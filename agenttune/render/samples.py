"""Canonical traces -> samples: which templates and tool format a trace is rendered in, and the sample itself.

Takes: a canonical trace (docs/trace-schema.md), the `format.templates` / `format.tool_formats` weights, a seed,
and optionally the model's tokenizer (for the `tool_call` template's own tool prompt, and the family templates' mode).
Gives: `choose_templates` / `choose_tool_format` (drawn from a hash of seed and trace id, so the data stage and
evaluation draw the same ones), `make_renderers` (template name -> renderer) and `render_trace` (one trace in one
template and tool format, as a sample: the contract in agenttune.render). The data stage (agenttune.data.format)
and evaluation (agenttune.evaluate.items, agenttune.evaluate.serve) both render through here.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from agenttune.common.config import section_with_defaults
from agenttune.render import FAMILIES, TEMPLATES, get_template, passthrough, tool_call
from agenttune.render.families import FAMILY_TOOL_FORMAT, FamilyText

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

# render(trace, tool_format) -> (messages, tool format used) or, for family templates, (messages, tool format used,
# keys the sample carries besides: its tools, reasoning_loss, render_mode).
Renderer = Callable[[dict, str], "tuple"]


def make_renderers(tokenizer=None, chat_template_tools: str | None = None, log=print,
                   reasoning_loss: bool | None = None) -> dict[str, Renderer]:
    """Template name -> render(trace, tool_format) -> (messages, tool format actually used[, sample keys]).
    `chat_template_tools` and `reasoning_loss` default to the schema's `format` values.

    `tool_call` uses the tokenizer's own tool prompt when `chat_template_tools` is "auto" and the tokenizer's chat
    template handles `tools=` in the Hermes style; otherwise it writes Qwen2.5's tool prompt into the system turn.
    A family template (qwen25, qwen3, llama31, mistral) decides its mode with the tokenizer at its first trace
    (agenttune.render.families: a tokenizer that cannot serve it is a config error naming format.templates.<name>)
    and records it in the sample as `render_mode`; without a tokenizer the tokenize stage decides."""
    defaults = section_with_defaults({}, "format")
    chat_template_tools = chat_template_tools or defaults["chat_template_tools"]
    reasoning_loss = defaults["reasoning_loss"] if reasoning_loss is None else reasoning_loss
    renderers: dict[str, Renderer] = {name: _plain(module) for name, module in TEMPLATES.items()}
    builder = tool_call.native_system(tokenizer) if tokenizer is not None and chat_template_tools == "auto" else None
    if builder is not None:
        log("tool_call: the model's chat template handles tools=; its own tool prompt is used")
        renderers["tool_call"] = lambda trace, fmt: (tool_call.render(trace, fmt, builder),
                                                     tool_call.NATIVE_TOOL_FORMAT)
    elif tokenizer is not None and chat_template_tools == "auto":
        log("tool_call: the model's chat template does not handle tools=; Hermes/Qwen-style tool instructions are "
            "written into the system prompt instead")
    for name, module in FAMILIES.items():
        renderers[name] = _family(module, tokenizer, chat_template_tools, reasoning_loss, log)
    return renderers


def _family(module, tokenizer, chat_template_tools: str, reasoning_loss: bool, log) -> Renderer:
    mode: list[str] = []  # decided at the first trace, so that configs without this template never probe

    def render(trace: dict, fmt: str):
        if not mode:
            if chat_template_tools == "builtin":
                mode.append("project")
            elif tokenizer is not None:
                mode.append(FamilyText.from_tokenizer(module, tokenizer, chat_template_tools, log).mode)
            else:
                mode.append("")
        keys = {"tools": trace["tools"], "reasoning_loss": reasoning_loss}
        return module.render(trace, fmt), FAMILY_TOOL_FORMAT, keys | ({"render_mode": mode[0]} if mode[0] else {})

    return render


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
    if renderers is None and template in FAMILIES:
        renderers = {template: _family(FAMILIES[template], None, "auto",
                                       section_with_defaults({}, "format")["reasoning_loss"], print)}
    if renderers is not None:
        messages, used, *keys = renderers[template](trace, tool_format)
    else:
        messages, used, keys = get_template(template).render(trace, tool_format), tool_format, []
    sample = _sample(trace, template, used, messages)
    for extra in keys:
        sample.update(extra)
    dropped = getattr(FAMILIES.get(template), "dropped_thoughts", None)
    if dropped is not None and dropped(messages):
        sample["dropped_thought_turns"] = dropped(messages)  # the format has no place for them: counted, not lost
    return sample

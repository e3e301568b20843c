"""The model's own chat template with tools: Hermes / Qwen `<tool_call>` JSON.

Takes: a canonical trace (`render`), or the text a model wrote for one step (`parse`).
Gives: the sample messages in this format, or the `ParsedOutput` the text amounts to.

Assistant steps that call tools carry one block per call,
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (several blocks are parallel calls), after the
step's text if it has any; answers are plain text; results come back as one user turn of
`<tool_response>\\n...\\n</tool_response>` blocks. That is, byte for byte, the text Qwen2.5's chat template writes
for `tool_calls` and `role: tool` messages, so samples need nothing but the plain system/user/assistant roles.

The tool instructions in the system turn come from one of two places:
  - the model's tokenizer, when its chat template handles `tools=` in this Hermes style
    (`native_system(tokenizer)` finds out by rendering a probe tool and returns a builder, else None): the
    system text is then exactly what the template writes for these tools, and the sample's tool format is
    recorded as "chat_template";
  - otherwise (SmolLM2's template ignores `tools=`), `INSTRUCTION` below, Qwen2.5's tool prompt written into the
    system turn by this module, with the tools in the configured tool-description format.
Generation stops at `<tool_response>` (a model that starts writing its own results).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Callable

from agenttune.render.common import assistant, dump, own_system, system, turns, user
from agenttune.render.parsing import (Call, Malformed, ParsedOutput, answered_unless_call, call_arguments, call_name,
                                      called, malformed, unfence, without_thinking)
from agenttune.render.tool_formats import describe_tools

NAME = "tool_call"
STOP = ("<tool_response>",)
ONE_CALL_PER_STEP = False
NATIVE_TOOL_FORMAT = "chat_template"
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2.5's chat template, the part it writes into the system turn when given tools.
INSTRUCTION = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

SystemBuilder = Callable[[list, str], str]


def format_calls(content: str, calls: list[dict]) -> str:
    blocks = "\n".join(f"<tool_call>\n{dump({'name': c['name'], 'arguments': c['arguments']})}\n</tool_call>"
                       for c in calls)
    return f"{content}\n{blocks}" if content else blocks


def builtin_system(tools: list[dict], own: str, tool_format: str) -> str:
    return f"{own or DEFAULT_SYSTEM}\n\n" + INSTRUCTION.format(tools=describe_tools(tools, tool_format))


def render(trace: dict, tool_format: str = "json_schema", system_builder: SystemBuilder | None = None) -> list[dict]:
    """Render a trace; with `system_builder` (from native_system) the tool instructions are the model's own."""
    own = own_system(trace)
    if system_builder is not None:
        text = system_builder(trace["tools"], own or DEFAULT_SYSTEM)
    else:
        text = builtin_system(trace["tools"], own, tool_format)
    messages = [system(text)]
    for turn in turns(trace):
        if turn["role"] == "user":
            messages.append(user(turn["content"]))
        elif turn["role"] == "assistant":
            content = turn["content"].strip()
            body = format_calls(content, turn["calls"]) if turn["calls"] else content
            messages.append(assistant(body, turn["calls"], turn["loss"]))
            if turn["results"]:
                messages.append(user("\n".join(f"<tool_response>\n{r['content']}\n</tool_response>"
                                               for r in turn["results"])))
    return messages


# --- parsing ---------------------------------------------------------------------------------------------------

_TOOL_CALL_TAG = re.compile(r"</?tool_call>")


def parse(text: str) -> ParsedOutput:
    """Qwen/Hermes style: one or more `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks.

    Several blocks are parallel calls. An unclosed or stray tag, or a block whose JSON does not
    parse, makes the whole output malformed. Text without tags is an answer.
    """
    body = without_thinking(text)
    tags = list(_TOOL_CALL_TAG.finditer(body))
    if not tags:
        return answered_unless_call(body, NAME)
    calls = []
    for i in range(0, len(tags), 2):
        open_tag, close_tag = tags[i], tags[i + 1] if i + 1 < len(tags) else None
        if open_tag.group() != "<tool_call>":
            return malformed("</tool_call> without an opening tag")
        if close_tag is None or close_tag.group() != "</tool_call>":
            return malformed("<tool_call> without a closing tag")
        block = unfence(body[open_tag.end():close_tag.start()])
        try:
            obj = json.loads(block)
        except json.JSONDecodeError as exc:
            return malformed(f"invalid JSON in <tool_call> block {i // 2 + 1}: {exc.msg}")
        try:
            if not isinstance(obj, dict):
                raise Malformed(f"<tool_call> block {i // 2 + 1} is not a JSON object")
            args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
            calls.append(Call(call_name(obj.get("name")), call_arguments(args)))
        except Malformed as exc:
            return malformed(str(exc))
    return called(calls)


# --- the tokenizer's own tool prompt ---------------------------------------------------------------------------

_PLACEHOLDER = "SYSTEM-PLACEHOLDER-9c41e"
_PROBE_USER = "USER-PLACEHOLDER-5b2d7"
_PROBE_TOOL = {"name": "probe_tool_3f8a", "description": "A probe tool.",
               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


def _as_api_tools(tools: list[dict]) -> list[dict]:
    return [{"type": "function", "function": t} for t in tools]


def native_system(tokenizer) -> SystemBuilder | None:
    """A builder of the system text the tokenizer's chat template writes for `tools=`, or None when the template
    does not handle tools in the Hermes `<tool_call>` style (then render() writes INSTRUCTION itself).

    How: render [system P, user U] with and without tools. Without tools the text is A + P + B; a template that
    handles tools gives A + X + B where X (the new system text) holds P, the tool and `<tool_call>`."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversation = [{"role": "system", "content": _PLACEHOLDER}, {"role": "user", "content": _PROBE_USER}]
    try:
        plain = tokenizer.apply_chat_template(conversation, tokenize=False)
        probed = tokenizer.apply_chat_template(conversation, tools=_as_api_tools([_PROBE_TOOL]), tokenize=False)
    except Exception:  # a template that raises on tools= (or on a system turn) does not handle them
        return None
    if plain.count(_PLACEHOLDER) != 1:
        return None
    head, tail = plain.split(_PLACEHOLDER)
    middle = _middle(probed, head, tail)
    if middle is None or _PLACEHOLDER not in middle or _PROBE_TOOL["name"] not in middle or "<tool_call>" not in middle:
        return None

    @functools.lru_cache(maxsize=4096)
    def build(tools_json: str, own: str) -> str:
        tools = json.loads(tools_json)
        text = tokenizer.apply_chat_template(conversation, tools=_as_api_tools(tools), tokenize=False)
        body = _middle(text, head, tail)
        if body is None or body.count(_PLACEHOLDER) != 1:
            raise ValueError("the chat template's system text with tools could not be located")
        return body.replace(_PLACEHOLDER, own)

    def builder(tools: list[dict], own: str) -> str:
        return build(json.dumps(tools, ensure_ascii=False), own)

    return builder


def _middle(text: str, head: str, tail: str) -> str | None:
    if not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head) + len(tail):
        return None
    return text[len(head) : len(text) - len(tail)]

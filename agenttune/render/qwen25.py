"""Qwen2.5's native tool format: Hermes `<tool_call>` JSON blocks, results as `<tool_response>` blocks in a user turn.

Takes: a canonical trace (`render`), a family sample's messages and tools (`render_text`), or what a model wrote
for one step (`parse`). Gives: family sample messages (agenttune.render.families), the full ChatML text as
Qwen2.5's chat template writes it, or the `ParsedOutput`.

The documented format (https://qwen.readthedocs.io/en/latest/framework/function_call.html, Qwen2.5's model card):
the system turn (the trace's own system text, else "You are Qwen, created by Alibaba Cloud. You are a helpful
assistant.") is followed by the `# Tools` block listing each tool as `{"type": "function", "function": {...}}`
JSON inside `<tools></tools>`; an assistant turn is its text, then one `<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>` block per call (several blocks are parallel calls); consecutive tool results are one user
turn of `<tool_response>\\n...\\n</tool_response>` blocks. Turns are `<|im_start|>role\\n...<|im_end|>\\n`.
Generation stops at `<|im_end|>` (the end of the turn, as text when the tokenizer lacks it) or `<tool_response>`.
"""

from __future__ import annotations

from agenttune.render.common import dump
from agenttune.render.families import family_messages
from agenttune.render.tool_call import parse as parse_hermes

NAME = "qwen25"
STOP = ("<|im_end|>", "<tool_response>")
ONE_CALL_PER_STEP = False
TURN_OPEN = ("<|im_start|>assistant\n",)
TURN_END = ("<|im_end|>",)
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n"
              '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def render(trace: dict, tool_format: str = "json_schema") -> list[dict]:
    """The trace as family sample messages; the tools are written by the template (tool_format is not used)."""
    return family_messages(trace, ONE_CALL_PER_STEP)


def tools_block(tools: list[dict]) -> str:
    return TOOLS_HEAD + "".join("\n" + dump({"type": "function", "function": t}) for t in tools) + TOOLS_TAIL


def call_blocks(calls: list[dict]) -> list[str]:
    return [f'<tool_call>\n{{"name": "{c["name"]}", "arguments": {dump(c["arguments"])}}}\n</tool_call>'
            for c in calls]


def tool_results(messages: list[dict], i: int) -> str:
    """Tool message i inside the user turn that holds a run of consecutive results."""
    first = i == 0 or messages[i - 1]["role"] != "tool"
    last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
    return (("<|im_start|>user" if first else "") + f"\n<tool_response>\n{messages[i]['content']}\n</tool_response>"
            + ("<|im_end|>\n" if last else ""))


def render_text(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    """The project's own rendering of Qwen2.5's documented format (the tokenizer's template is used when it has one)."""
    own = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    system = own if own is not None else DEFAULT_SYSTEM
    out = [f"<|im_start|>system\n{system}\n\n{tools_block(tools)}<|im_end|>\n" if tools
           else f"<|im_start|>system\n{system}<|im_end|>\n"]
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            out.append(tool_results(messages, i))
        elif m["role"] == "assistant" and m.get("tool_calls"):
            out.append("<|im_start|>assistant" + (f"\n{m['content']}" if m["content"] else "")
                       + "".join("\n" + b for b in call_blocks(m["tool_calls"])) + "<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def model_text(message: dict) -> str:
    """What the model writes for an assistant turn (between the turn opening and `<|im_end|>`)."""
    text = [message["content"]] if message["content"] else []
    return "\n".join(text + call_blocks(message.get("tool_calls") or []))


def recognizes(text: str) -> bool:
    """A native render of families.PROBE_MESSAGES in Qwen2.5's format (Hermes calls, no reasoning shown)."""
    from agenttune.render.families import PROBE_REASONING

    return ('<tool_call>\n{"name": "probe_tool_3f8a", "arguments": ' in text and "<tool_response>" in text
            and "<tools>" in text and PROBE_REASONING not in text)


def parse(text: str):
    """Hermes `<tool_call>` blocks (several: parallel calls), or an answer; as the tool_call template."""
    return parse_hermes(text)

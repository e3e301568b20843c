"""Qwen3's native tool format: Qwen2.5's Hermes `<tool_call>` format plus `<think>` reasoning blocks.

Takes/gives: as agenttune.render.qwen25. The documented format (https://qwen.readthedocs.io/en/latest/
framework/function_call.html, Qwen3's model card "Best practices"): no default system text; with tools the system
turn is the trace's system text, a blank line, and the same `# Tools` block as Qwen2.5. An assistant turn after the
last user query is written `<think>\\n{reasoning}\\n</think>\\n\\n{content}` when it has reasoning or is the last
message; assistant turns before the last user query are written without their reasoning (Qwen3 drops earlier
thinking from the history), which is why its renders are not prefix-stable. A parallel call's block follows a newline
unless it is the first block of a turn without text. Reasoning in the loss or not: format.reasoning_loss.
"""

from __future__ import annotations

from agenttune.render.families import PROBE_REASONING, family_messages
from agenttune.render.qwen25 import call_blocks, tool_results, tools_block
from agenttune.render.tool_call import parse as parse_hermes

NAME = "qwen3"
STOP = ("<|im_end|>", "<tool_response>")
ONE_CALL_PER_STEP = False
SPLIT_AT_USER_TURNS = True  # the render changes with the last user turn: train/val samples are cut at user turns
TURN_OPEN = ("<|im_start|>assistant\n",)
TURN_END = ("<|im_end|>",)
THINK_END = "</think>\n\n"  # reasoning out of the loss: labels start at the text after the block


def render(trace: dict, tool_format: str = "json_schema") -> list[dict]:
    return family_messages(trace, ONE_CALL_PER_STEP)


def render_text(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    own = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    out = []
    if tools:
        out.append("<|im_start|>system\n" + (f"{own}\n\n" if own else "") + tools_block(tools) + "<|im_end|>\n")
    elif own is not None:
        out.append(f"<|im_start|>system\n{own}<|im_end|>\n")
    last_query = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            out.append(tool_results(messages, i))
        elif m["role"] == "assistant":
            content, reasoning = m["content"], m.get("reasoning") or ""
            if i > last_query and (i == len(messages) - 1 or reasoning):
                body = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
            else:
                body = content
            blocks = call_blocks(m.get("tool_calls") or [])
            calls = "".join(("\n" if (j == 0 and content) or j > 0 else "") + b for j, b in enumerate(blocks))
            out.append(f"<|im_start|>assistant\n{body}{calls}<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def model_text(message: dict) -> str:
    """What the model writes for a turn after the last query (its reasoning block, text and calls)."""
    reasoning, content = message.get("reasoning") or "", message["content"]
    blocks = call_blocks(message.get("tool_calls") or [])
    calls = "".join(("\n" if (j == 0 and content) or j > 0 else "") + b for j, b in enumerate(blocks))
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}{calls}"


def recognizes(text: str) -> bool:
    return ('<tool_call>\n{"name": "probe_tool_3f8a", "arguments": ' in text and "<tool_response>" in text
            and f"<think>\n{PROBE_REASONING}\n</think>" in text)


def parse(text: str):
    """`<think>` blocks dropped, then Hermes `<tool_call>` blocks or an answer."""
    return parse_hermes(text)

"""AutoGPT command template (Significant-Gravitas/AutoGPT's classic prompt, shortened for small models).

The system turn gives the goal setting, the commands (the tools) and the response format; every assistant step
is one JSON object `{"thoughts": {"text": ...}, "command": {"name": ..., "args": {...}}}`. The final answer is the
`finish` command with `args: {"response": ...}`. A command's result comes back as a user turn
`Command <name> returned: <result>`, as AutoGPT feeds it back. One command per step, so parallel calls become
consecutive steps (agenttune.evaluate.parse reads one command per response). Generation stops at a new `Command ` line.
"""

from __future__ import annotations

import re

from agenttune.render.common import assistant, dump, join_system, own_system, system, turns, user
from agenttune.render.tool_formats import describe_tools

NAME = "autogpt"
STOP = ("\nCommand ",)
# One call per assistant step: parallel calls become consecutive steps (agenttune.render.common.turns).
ONE_CALL_PER_STEP = True
FINISH = "finish"

INSTRUCTION = """You are an autonomous assistant that completes the user's task with the commands below.

Constraints:
1. Use a command only when the task needs it; exclusively use the commands listed below.
2. When the task is done, or needs no command, use the "{finish}" command with args "response": "<your answer>".

Commands:
{tools}

You should only respond in JSON format as described below
Response Format:
{{"thoughts": {{"text": "thought"}}, "command": {{"name": "command name", "args": {{"arg name": "value"}}}}}}
Ensure the response can be parsed by Python json.loads"""

_LEADING_THOUGHT = re.compile(r"^\s*Thought\s*:\s*", re.I)


def format_step(thought: str, name: str, args: dict) -> str:
    return dump({"thoughts": {"text": thought}, "command": {"name": name, "args": args}})


def render(trace: dict, tool_format: str = "autogpt") -> list[dict]:
    instructions = INSTRUCTION.format(finish=FINISH, tools=describe_tools(trace["tools"], tool_format))
    messages = [system(join_system(own_system(trace), instructions))]
    used_tool = False
    for turn in turns(trace, ONE_CALL_PER_STEP):
        if turn["role"] == "user":
            messages.append(user(turn["content"]))
        elif turn["role"] == "assistant":
            thought = _LEADING_THOUGHT.sub("", turn["content"].strip())
            if turn["calls"]:
                used_tool = True
                call = turn["calls"][0]
                body = format_step(thought or f"I should use {call['name']}.", call["name"], call["arguments"])
            else:
                lead = "I have what I need to answer." if used_tool else "I can answer this directly."
                body = format_step(lead, FINISH, {"response": turn["content"].strip()})
            messages.append(assistant(body, turn["calls"], turn["loss"]))
            for result in turn["results"]:
                messages.append(user(f"Command {result['name']} returned: {result['content']}"))
    return messages

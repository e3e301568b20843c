"""AutoGPT command template (Significant-Gravitas/AutoGPT's classic prompt, shortened for small models).

Takes: a canonical trace (`render`), or the text a model wrote for one step (`parse`).
Gives: the sample messages in this format, or the `ParsedOutput` the text amounts to.

The system turn gives the goal setting, the commands (the tools) and the response format; every assistant step
is one JSON object `{"thoughts": {"text": ...}, "command": {"name": ..., "args": {...}}}`. The final answer is the
`finish` command with `args: {"response": ...}`. A command's result comes back as a user turn
`Command <name> returned: <result>`, as AutoGPT feeds it back. One command per step, so parallel calls become
consecutive steps (`parse` reads one command per response). Generation stops at a new `Command ` line.
"""

from __future__ import annotations

import json
import re

from agenttune.render.common import assistant, dump, join_system, own_system, system, turns, user
from agenttune.render.parsing import (Call, Malformed, ParsedOutput, answered, answered_unless_call, call_arguments,
                                      call_name, called, decode_prefix, find_json_object, malformed, unfence,
                                      without_thinking)
from agenttune.render.tool_formats import describe_tools

NAME = "autogpt"
STOP = ("\nCommand ",)
# One call per assistant step: parallel calls become consecutive steps (agenttune.render.common.turns).
ONE_CALL_PER_STEP = True
FINISH = "finish"
# Commands that end the task or skip the step: the model is answering, not calling a tool.
NO_CALL_COMMANDS = (FINISH, "do_nothing")

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


# --- parsing ---------------------------------------------------------------------------------------------------


def parse(text: str) -> ParsedOutput:
    """AutoGPT's response format: `{"thoughts": {...}, "command": {"name": ..., "args": {...}}}`.

    Command "finish" / "do_nothing" is an answer (its text from args `response` or `reason`);
    prose is an answer; a JSON response that does not parse or lacks a command is malformed.
    """
    body = unfence(without_thinking(text))
    if body.startswith(("{", "[")):
        try:
            obj = decode_prefix(body)
        except ValueError as exc:
            return malformed(str(exc))
    elif re.search(r'"command"\s*:', body):
        obj = find_json_object(body, ("command",))
        if obj is None:
            return malformed("command JSON in the text could not be decoded")
    else:
        return answered_unless_call(body, NAME)

    if not isinstance(obj, dict) or not isinstance(obj.get("command"), dict):
        return malformed("response without a command object")
    command = obj["command"]
    try:
        name = call_name(command.get("name"))
        args = call_arguments(command["args"] if "args" in command else command.get("arguments"))
    except Malformed as exc:
        return malformed(str(exc))
    if name in NO_CALL_COMMANDS:
        answer = args.get("response") or args.get("reason") or ""
        return answered(answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False))
    return called([Call(name, args)])

"""ReAct template (Yao et al. 2022; the LangChain agent prompt): Thought / Action / Action Input / Observation.

Takes: a canonical trace (`render`), or the text a model wrote for one step (`parse`).
Gives: the sample messages in this format, or the `ParsedOutput` the text amounts to.

The system turn holds the instruction and the tools; each assistant step is one Thought plus one Action and its
Action Input (JSON), or a Final Answer; tool results come back as user turns starting with `Observation:`
(context, never trained on). Generation stops at `Observation:`. A ReAct step names one action, so parallel
calls become consecutive steps, each followed by its own Observation (`parse` reads one action per step).
"""

from __future__ import annotations

import re

from agenttune.render.common import assistant, dump, join_system, own_system, system, tool_names, turns, user
from agenttune.render.parsing import (Call, ParsedOutput, answered_unless_call, called, decode_prefix, malformed,
                                      unfence, without_thinking)
from agenttune.render.tool_formats import describe_tools

NAME = "react"
STOP = ("Observation:",)
# One call per assistant step: parallel calls become consecutive steps (agenttune.render.common.turns).
ONE_CALL_PER_STEP = True

INSTRUCTION = """Answer the following questions as best you can. You have access to the following tools:

{tools}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tool_names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can repeat N times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

If no tool is needed, answer directly with a Thought and a Final Answer.

Begin!"""

# Some sources (ToolBench) already start their step text with "Thought:"; the template adds its own.
_LEADING_THOUGHT = re.compile(r"^\s*Thought\s*:\s*", re.I)
# ToolBench's step text also carries lines like "Action: Call the 'x' function with ...": inside a ReAct step they
# would be read as the step's action, so such lines of a source's own thought text are dropped (the step's real
# Action line follows).
_KEYWORD_LINE = re.compile(r"^[ \t]*(?:Action|Action[ \t]*Input|Observation|Final[ \t]*Answer)[ \t]*:.*\n?",
                           re.M | re.I)


def clean_thought(text: str) -> str:
    text = _KEYWORD_LINE.sub("", _LEADING_THOUGHT.sub("", text.strip()))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def format_call(call: dict) -> str:
    return f"Action: {call['name']}\nAction Input: {dump(call['arguments'])}"


def render(trace: dict, tool_format: str = "react_list") -> list[dict]:
    tools = trace["tools"]
    instructions = INSTRUCTION.format(tools=describe_tools(tools, tool_format), tool_names=tool_names(tools))
    messages = [system(join_system(own_system(trace), instructions))]
    used_tool = False
    for turn in turns(trace, ONE_CALL_PER_STEP):
        if turn["role"] == "user":
            messages.append(user(f"Question: {turn['content']}"))
        elif turn["role"] == "assistant":
            if turn["calls"]:
                used_tool = True
                thought = clean_thought(turn["content"]) or f"I should use {turn['calls'][0]['name']}."
                body = f"Thought: {thought}\n" + format_call(turn["calls"][0])
            else:
                lead = "I now know the final answer." if used_tool else "I can answer this directly without a tool."
                body = f"Thought: {lead}\nFinal Answer: {turn['content'].strip()}"
            messages.append(assistant(body, turn["calls"], turn["loss"]))
            if turn["results"]:
                messages.append(user("\n".join(f"Observation: {r['content']}" for r in turn["results"])))
    return messages


# --- parsing ---------------------------------------------------------------------------------------------------

_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.M | re.I)
_ACTION_INPUT = re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.M | re.I)
_FINAL = re.compile(r"^[ \t]*Final[ \t]*Answer[ \t]*:", re.M | re.I)
# Where an Action Input ends: the next ReAct keyword line (the model may run on past its stop string).
_NEXT_KEYWORD = re.compile(r"^[ \t]*(?:Observation|Thought|Action|Final[ \t]*Answer)[ \t]*:", re.M | re.I)


def _action_name(raw: str) -> str:
    name = raw.strip().strip("`'\"").strip()
    # `Action: get_weather()` or `Action: get_weather(city=...)`: the name is what comes before the parens.
    if name.endswith(")") and "(" in name:
        name = name[: name.index("(")].strip()
    return name


def parse(text: str) -> ParsedOutput:
    """Classic ReAct: `Thought: ...\\nAction: name\\nAction Input: {json}`; or `Final Answer: ...`.

    Only the first Action / Action Input pair counts (a ReAct step has one action). If both an
    Action and a Final Answer appear, whichever comes first decides. Action Input that is not a
    JSON object is kept as the raw string (still a call); an empty one means no arguments.
    """
    text = without_thinking(text)
    action = _ACTION.search(text)
    action_input = _ACTION_INPUT.search(text)
    final = _FINAL.search(text)
    first_action_pos = min(m.start() for m in (action, action_input) if m) if (action or action_input) else None

    if first_action_pos is None or (final and final.start() < first_action_pos):
        if final:
            answer = text[final.end():]
            nxt = _NEXT_KEYWORD.search(answer)
            return answered_unless_call(answer[: nxt.start()] if nxt else answer, NAME)
        return answered_unless_call(text, NAME)

    if action is None:
        return malformed("Action Input without an Action")
    name = _action_name(action.group(1))
    if not name:
        return malformed("Action without a tool name")
    action_input = _ACTION_INPUT.search(text, action.end())
    if action_input is None:
        return malformed("Action without an Action Input")
    raw = text[action_input.end():]
    nxt = _NEXT_KEYWORD.search(raw)
    raw = unfence(raw[: nxt.start()] if nxt else raw)
    if not raw:
        return called([Call(name, {})])
    try:
        decoded = decode_prefix(raw)
    except ValueError:
        decoded = None
    arguments = decoded if isinstance(decoded, dict) else raw
    return called([Call(name, arguments)])

"""ReAct template (Yao et al. 2022; the LangChain agent prompt): Thought / Action / Action Input / Observation.

The system turn holds the instruction and the tools; each assistant step is one Thought plus one Action and its
Action Input (JSON), or a Final Answer; tool results come back as user turns starting with `Observation:`
(context, never trained on). Generation stops at `Observation:`.
"""

from __future__ import annotations

import json

from agenttune.render.tool_formats import describe_tools

NAME = "react"
STOP = ("Observation:",)

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


def format_call(call: dict) -> str:
    args = json.dumps(call["arguments"], ensure_ascii=False, separators=(", ", ": "))
    return f"Action: {call['name']}\nAction Input: {args}"


def render(trace: dict, tool_format: str = "react_list") -> list[dict]:
    tools = trace["tools"]
    system = INSTRUCTION.format(tools=describe_tools(tools, tool_format), tool_names=", ".join(t["name"] for t in tools))
    messages = [{"role": "system", "content": system, "loss": False}]
    used_tool = False
    pending_observations: list[str] = []
    for msg in trace["messages"]:
        role = msg["role"]
        if role == "system":
            # A trace's own system text is kept as context ahead of the ReAct instruction.
            messages[0]["content"] = msg["content"].strip() + "\n\n" + system
        elif role == "user":
            messages.append({"role": "user", "content": f"Question: {msg['content']}", "loss": False})
        elif role == "tool":
            pending_observations.append(f"Observation: {msg['content']}")
        else:
            if pending_observations:
                messages.append({"role": "user", "content": "\n".join(pending_observations), "loss": False})
                pending_observations = []
            calls = msg.get("tool_calls") or []
            thought = msg["content"].strip()
            if calls:
                used_tool = True
                thought = thought or f"I should use {calls[0]['name']}."
                body = f"Thought: {thought}\n" + "\n".join(format_call(c) for c in calls)
            else:
                lead = "I now know the final answer." if used_tool else "I can answer this directly without a tool."
                body = f"Thought: {lead}\nFinal Answer: {thought}"
            loss = msg.get("loss") is not False
            messages.append({"role": "assistant", "content": body, "loss": loss, "tool_calls": calls})
    return messages

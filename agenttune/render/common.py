"""What every prompt template shares: canonical messages grouped into turns, and the sample message shape.

Takes: one canonical trace (docs/trace-schema.md).
Gives: `turns(trace, one_call_per_step)`: a list of turns, each
    {"role": "system" | "user", "content"}                                       or
    {"role": "assistant", "content", "calls": [...], "loss": bool, "reasoning": str, "results": [{"name", "content"}]}
where `results` are the tool messages that answer the turn's calls, in call order. Templates whose format holds
one call per step (ReAct, AutoGPT) ask for `one_call_per_step=True`: a turn with parallel calls is then cut into
one turn per call, each followed by its own result, which is how those agents would have run the same calls.
And the helpers that build sample messages in the shape the tokenize and evaluate stages read.
"""

from __future__ import annotations

import json


def turns(trace: dict, one_call_per_step: bool = False) -> list[dict]:
    out: list[dict] = []
    for msg in trace["messages"]:
        role = msg["role"]
        if role == "tool":
            # validate_trace guarantees a tool message follows an assistant turn with a pending call.
            out[-1]["results"].append({"name": msg.get("name", ""), "content": msg["content"]})
        elif role == "assistant":
            out.append({
                "role": "assistant",
                "content": msg["content"],
                "calls": list(msg.get("tool_calls") or []),
                # Canonical: absent/null/true = train, false = context (AgentInstruct's per-turn flags).
                "loss": msg.get("loss") is not False,
                "reasoning": msg.get("reasoning") or "",  # only the family templates show it (families.py)
                "results": [],
            })
        else:
            out.append({"role": role, "content": msg["content"]})
    if not one_call_per_step:
        return out
    cut: list[dict] = []
    for turn in out:
        if turn["role"] != "assistant" or len(turn["calls"]) < 2:
            cut.append(turn)
            continue
        for k, call in enumerate(turn["calls"]):
            result = turn["results"][k : k + 1]
            first = k == 0  # the turn's text and reasoning go with its first call
            cut.append({**turn, "content": turn["content"] if first else "",
                        "reasoning": turn["reasoning"] if first else "", "calls": [call], "results": result})
    return cut


def own_system(trace: dict) -> str:
    """The trace's own system text ("" if none); templates keep it ahead of their instructions."""
    first = trace["messages"][0]
    return first["content"].strip() if first["role"] == "system" else ""


def join_system(own: str, instructions: str) -> str:
    return f"{own}\n\n{instructions}" if own else instructions


def system(content: str) -> dict:
    return {"role": "system", "content": content, "loss": False}


def user(content: str) -> dict:
    return {"role": "user", "content": content, "loss": False}


def assistant(content: str, calls: list[dict], loss: bool) -> dict:
    return {"role": "assistant", "content": content, "loss": loss,
            "tool_calls": [{"name": c["name"], "arguments": c["arguments"]} for c in calls]}


def dump(value: object) -> str:
    """Compact one-line JSON with spaces after separators, the way the templates show JSON to the model."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def tool_names(tools: list[dict]) -> str:
    return ", ".join(t["name"] for t in tools)

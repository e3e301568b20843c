"""Pass-through: keep a conversation's own text, as given.

For traces that are already rendered (AgentInstruct: the task prompt describes the actions as text and the
environment answers in user turns; `meta.passthrough = true`) and for general chat data mixed into training.
Every message keeps its role and text verbatim; an assistant turn keeps its per-turn loss flag (AgentInstruct
marks the prompt-setup reply "Ok." `loss: false`). No tool list is written (tool format "none"), and such samples
carry no structured `tool_calls`, so evaluation makes no tool items from them, and there is no parser. Not a choice
in `format.templates`: agenttune.data.format uses it for exactly those two kinds of input.
"""

from __future__ import annotations

from agenttune.render.common import assistant, system, user

NAME = "passthrough"
STOP = ()
ONE_CALL_PER_STEP = False
TOOL_FORMAT = "none"


def render(trace: dict, tool_format: str = TOOL_FORMAT) -> list[dict]:
    if trace["tools"]:
        raise ValueError(f"trace {trace['id']}: pass-through keeps text as given and cannot show its "
                         f"{len(trace['tools'])} structured tools; render it with a prompt template instead")
    messages = []
    for msg in trace["messages"]:
        if msg["role"] == "system":
            messages.append(system(msg["content"]))
        elif msg["role"] == "user":
            messages.append(user(msg["content"]))
        elif msg["role"] == "assistant":
            if msg.get("tool_calls"):
                raise ValueError(f"trace {trace['id']}: pass-through traces cannot hold structured tool calls")
            messages.append(assistant(msg["content"], [], msg.get("loss") is not False))
        else:
            raise ValueError(f"trace {trace['id']}: a pass-through trace has no tool messages")
    return messages

"""Rendering: canonical traces -> formatted chat samples, one module per prompt template.

A sample is a dict: `{"id", "trace_id", "source", "kind", "task", "template", "tool_format", "messages": [...]}`
(data.py adds a few more keys) where each message is `{"role": "system"|"user"|"assistant", "content": str,
"loss": bool}` and assistant messages also carry `"tool_calls"` (the canonical calls they make, `[]` for an
answer) so evaluation knows the expected call.

A template module has `NAME` (the name agenttune.evaluate.parse knows it by), `STOP` (stop strings for generation: text
that only appears when a model runs on past its turn, never inside a valid output of any template, because
evaluation stops on the union of all templates' strings), `ONE_CALL_PER_STEP` (True when its format holds one
call per step, so parallel calls become consecutive steps) and `render(trace, tool_format) -> list[message]`.
To add a template: write `agenttune/render/<name>.py`, add a parser of the same name to agenttune/evaluate/parse.py and
one line to TEMPLATES (and the name to `format.templates` in config/schema.yaml).

`passthrough` is not a prompt template to choose: it keeps already-rendered text (AgentInstruct) and general chat.
"""

from __future__ import annotations

from agenttune.render import autogpt, openai_json, passthrough, react, tool_call

TEMPLATES = {
    "react": react,
    "openai_json": openai_json,
    "autogpt": autogpt,
    "tool_call": tool_call,
}
ALL = {**TEMPLATES, "passthrough": passthrough}


def get_template(name: str):
    try:
        return ALL[name]
    except KeyError:
        raise KeyError(f"unknown template '{name}' (known: {', '.join(sorted(ALL))})") from None

"""Rendering: canonical traces -> formatted chat samples, one module per prompt template.

A sample is a dict: `{"id", "trace_id", "source", "kind", "template", "tool_format", "messages": [...]}` where each
message is `{"role": "system"|"user"|"assistant", "content": str, "loss": bool}` and assistant messages also carry
`"tool_calls"` (the canonical calls they make, `[]` for an answer) so evaluation knows the expected call.
To add a template: write `agenttune/render/<name>.py` with `render(trace, tool_format) -> list[message]` and add one
line to TEMPLATES.
"""

from __future__ import annotations

from agenttune.render import react

TEMPLATES = {
    "react": react,
}


def get_template(name: str):
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template '{name}' (known: {', '.join(sorted(TEMPLATES))})") from None

"""Tool-description formats: how a tool list is written into a prompt, independent of the template."""

from __future__ import annotations

import json


def describe_json_schema(tools: list[dict]) -> str:
    """One JSON object per line: name, description, parameters (the OpenAI function schema)."""
    return "\n".join(json.dumps(t, ensure_ascii=False, separators=(", ", ": ")) for t in tools)


def describe_react_list(tools: list[dict]) -> str:
    """LangChain's ReAct list: `name: description, args: {param: type}`."""
    lines = []
    for t in tools:
        props = t.get("parameters", {}).get("properties", {})
        args = {k: v.get("type", "any") if isinstance(v, dict) else "any" for k, v in props.items()}
        lines.append(f"{t['name']}: {t['description']}, args: {json.dumps(args, separators=(', ', ': '))}")
    return "\n".join(lines)


TOOL_FORMATS = {
    "json_schema": describe_json_schema,
    "react_list": describe_react_list,
}


def describe_tools(tools: list[dict], tool_format: str) -> str:
    try:
        return TOOL_FORMATS[tool_format](tools)
    except KeyError:
        raise KeyError(f"unknown tool format '{tool_format}' (known: {', '.join(sorted(TOOL_FORMATS))})") from None

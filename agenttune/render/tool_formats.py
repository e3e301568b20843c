"""Tool-description formats: how a tool list is written into a prompt, independent of the template.

Takes: a canonical tool list (`{"name", "description", "parameters"}` each, parameters a JSON-schema object).
Gives: the text a template puts where its prompt lists the tools. Every template accepts every format, so one
tool is seen in several descriptions:
  - json_schema: one OpenAI function schema per line (what function-calling APIs and Qwen/Hermes show);
  - react_list:  LangChain's ReAct list, `name: description, args: {"param": "type"}`;
  - autogpt:     AutoGPT's numbered command one-liners, `1. Web Search: "web_search", args: "query": "<query>"`,
                 the tool's description after the line (AutoGPT's own commands had none; ours need it to tell
                 the tools apart).
"""

from __future__ import annotations

import json
import re


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


def command_label(name: str) -> str:
    """`web_search` -> `Web Search`, `getWeather` -> `Get Weather`, `transitaire.find` -> `Transitaire Find`."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = re.split(r"[\W_]+", words)
    return " ".join(w[:1].upper() + w[1:] for w in words if w) or name


def describe_autogpt(tools: list[dict]) -> str:
    """AutoGPT's command list: `1. Web Search: "web_search", args: "query": "<query>", "k": "<k>"`.

    Optional arguments (not in `required`) read `"<k, optional>"`; the description follows on the same line
    after ` - ` when there is one."""
    lines = []
    for i, t in enumerate(tools, start=1):
        params = t.get("parameters", {})
        props = params.get("properties", {}) if isinstance(params.get("properties"), dict) else {}
        required = params.get("required") if isinstance(params.get("required"), list) else []
        args = ", ".join(f'"{k}": "<{k}>"' if k in required else f'"{k}": "<{k}, optional>"' for k in props)
        line = f'{i}. {command_label(t["name"])}: "{t["name"]}", args: {args}'.rstrip()
        description = " ".join(t["description"].split())
        lines.append(f"{line} - {description}" if description else line)
    return "\n".join(lines)


TOOL_FORMATS = {
    "json_schema": describe_json_schema,
    "react_list": describe_react_list,
    "autogpt": describe_autogpt,
}


def describe_tools(tools: list[dict], tool_format: str) -> str:
    try:
        describe = TOOL_FORMATS[tool_format]
    except KeyError:
        raise KeyError(f"unknown tool format '{tool_format}' (known: {', '.join(sorted(TOOL_FORMATS))})") from None
    return describe(tools)

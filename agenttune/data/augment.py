"""Augmentations of train/val traces (Hammer, Lin et al. 2024): function- and parameter-name masking, irrelevance
examples made by removing the called tools, and tool-list shuffling.

Takes: one canonical trace (docs/trace-schema.md), already split and given its distractors, and a seed.
Gives:
  - `mask_names(trace, seed)`: the trace with every function name and parameter name replaced by a random but
    readable identifier (`fn_k3x9q`, `arg_7pd2`), consistently in the tool list (nested object properties and
    `required` lists too), the calls' names and argument keys, the tool messages' names, and whole-word mentions of
    identifier-like function names in the trace's own system and assistant text (content and reasoning);
    descriptions, user text and tool results untouched. Also the mapping used (original -> masked), so a masked
    render can be read back;
  - `shuffle_tools(trace, seed)`: the tool list in a seeded order;
  - `irrelevant_copy(trace)`: a copy whose called tools are removed from the list (the other tools stay), cut
    after the first user request that led to a call, answered by `IRRELEVANT_ANSWER` without a call; None when no
    tool would be left;
  - `check_config(augment)`: the `format.augment` section, refused with the key named when it cannot work.
Every choice is a hash of (seed, purpose, trace id, ...): the same input gives the same output in every process.
The data stage (agenttune.data.format) decides which traces get which augmentation and counts them.
"""

from __future__ import annotations

import hashlib
import re

from agenttune.traces.sources import FormatError

# The target of an irrelevance copy. Fixed, so the model learns one plain way of saying that no offered function
# fits; it names no function, since the ones that would have fitted were removed.
IRRELEVANT_ANSWER = ("None of the functions I have can do what this request needs, so I cannot make a function "
                     "call for it.")
IRRELEVANT_SUFFIX = "#irrelevant"

_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0: masked names are meant to be copied exactly
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf")
# A function name counts as an identifier (and is replaced in text) when it is not a plain word: it has a
# separator, a digit or an inner capital. `translate` stays in "I will translate it"; `get_weather` does not.
_IDENTIFIER_LIKE = re.compile(r"[_.\-0-9]|[a-z][A-Z]")


def check_config(augment: dict | None) -> None:
    """Config errors name the key: a probability outside [0, 1], or an irrelevance share that leaves no positive
    traces (the share is of the tool traces after augmentation, so 1 would mean irrelevance copies only)."""
    if not augment:
        return
    p = augment["name_masking"]["p"]
    if not 0 <= p <= 1:
        raise FormatError(f"format.augment.name_masking.p = {p}: a probability must be in [0, 1]")
    share = augment["irrelevance"]["share"]
    if not 0 <= share < 1:
        raise FormatError(f"format.augment.irrelevance.share = {share}: the share of irrelevance copies among the "
                          "tool traces must be in [0, 1); 1 or more leaves no positive traces (Hammer: about 0.1)")


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:16], "big")


def _identifier(prefix: str, length: int, *parts: object) -> str:
    n = _hash(*parts)
    chars = []
    for _ in range(length):
        n, r = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[r])
    return prefix + "".join(chars)


# --- walking JSON schemas -------------------------------------------------------------------------------------


def _parameter_names(schema: object, into: list[str]) -> None:
    """Every property name declared anywhere in the schema (nested objects, array items, anyOf/oneOf/allOf)."""
    if not isinstance(schema, dict):
        return
    props = schema.get("properties")
    if isinstance(props, dict):
        for name, sub in props.items():
            into.append(name)
            _parameter_names(sub, into)
    items = schema.get("items")
    for sub in items if isinstance(items, list) else [items]:
        _parameter_names(sub, into)
    if isinstance(schema.get("additionalProperties"), dict):
        _parameter_names(schema["additionalProperties"], into)
    for key in _SCHEMA_LISTS:
        for sub in schema.get(key) or []:
            _parameter_names(sub, into)


def _mask_schema(schema: object, params: dict[str, str]) -> object:
    """The schema with its property names (and `required` entries) renamed; everything else as it was."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {params[k]: _mask_schema(v, params) for k, v in schema["properties"].items()}
        if isinstance(schema.get("required"), list):
            out["required"] = [params.get(k, k) if isinstance(k, str) else k for k in schema["required"]]
    items = schema.get("items")
    if isinstance(items, list):
        out["items"] = [_mask_schema(s, params) for s in items]
    elif isinstance(items, dict):
        out["items"] = _mask_schema(items, params)
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _mask_schema(schema["additionalProperties"], params)
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [_mask_schema(s, params) for s in schema[key]]
    return out


def _declared(schema: object) -> tuple[dict, object]:
    """(declared properties, schema for the other keys) of an object schema, anyOf/oneOf/allOf branches merged."""
    props: dict = {}
    extra = None
    if isinstance(schema, dict):
        if isinstance(schema.get("properties"), dict):
            props.update(schema["properties"])
        if isinstance(schema.get("additionalProperties"), dict):
            extra = schema["additionalProperties"]
        for key in _SCHEMA_LISTS:
            for sub in schema.get(key) or []:
                sub_props, sub_extra = _declared(sub)
                props = {**sub_props, **props}
                extra = extra if extra is not None else sub_extra
    return props, extra


def _mask_value(value: object, schema: object, params: dict[str, str]) -> object:
    """An argument value with the keys its schema declares renamed (nested objects, arrays of objects). Keys the
    schema does not declare are data (a free-form object) or a mistake of the source: they stay as they are."""
    if isinstance(value, dict):
        props, extra = _declared(schema)
        return {(params[k] if k in props else k): _mask_value(v, props[k] if k in props else extra, params)
                for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema, dict) else None
        if isinstance(items, list):
            return [_mask_value(v, items[i] if i < len(items) else None, params) for i, v in enumerate(value)]
        return [_mask_value(v, items, params) for v in value]
    return value


# --- the augmentations ----------------------------------------------------------------------------------------


def name_mapping(trace: dict, seed: int) -> dict[str, dict[str, str]]:
    """{"functions": {name: masked}, "parameters": {name: masked}} for this trace: distinct masked names, none equal
    to an original name, drawn from (seed, trace id, name). One parameter name is masked alike in every tool."""
    functions = list(dict.fromkeys(t["name"] for t in trace["tools"]))
    found: list[str] = []
    for tool in trace["tools"]:
        _parameter_names(tool.get("parameters"), found)
    parameters = list(dict.fromkeys(found))
    taken = set(functions) | set(parameters)
    mapping: dict[str, dict[str, str]] = {"functions": {}, "parameters": {}}
    for kind, names, prefix, length in (("functions", functions, "fn_", 5), ("parameters", parameters, "arg_", 4)):
        for name in names:
            attempt = 0
            while (masked := _identifier(prefix, length, "mask", seed, trace["id"], kind, name, attempt)) in taken:
                attempt += 1
            taken.add(masked)
            mapping[kind][name] = masked
    return mapping


def _text_replacer(functions: dict[str, str]):
    """Whole-word replacement of identifier-like function names in free text (longest name first)."""
    names = sorted((n for n in functions if _IDENTIFIER_LIKE.search(n)), key=lambda n: (-len(n), n))
    if not names:
        return lambda text: text
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, names)) + r")(?![\w])")
    return lambda text: pattern.sub(lambda m: functions[m.group(0)], text)


def mask_names(trace: dict, seed: int) -> tuple[dict, dict[str, dict[str, str]]]:
    """The trace with function and parameter names masked (see the module docstring), and the mapping used."""
    mapping = name_mapping(trace, seed)
    functions, params = mapping["functions"], mapping["parameters"]
    schemas = {t["name"]: t.get("parameters") for t in trace["tools"]}
    in_text = _text_replacer(functions)
    tools = [{**t, "name": functions[t["name"]], "parameters": _mask_schema(t.get("parameters"), params)}
             for t in trace["tools"]]
    messages = []
    for m in trace["messages"]:
        m = dict(m)
        if m["role"] in ("system", "assistant"):
            m["content"] = in_text(m["content"])
        if m["role"] == "assistant" and m.get("reasoning"):  # the model's <think> text names the tools too
            m["reasoning"] = in_text(m["reasoning"])
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "name": functions[c["name"]],
                                "arguments": _mask_value(c["arguments"], schemas[c["name"]], params)}
                               for c in m["tool_calls"]]
        if m["role"] == "tool" and m.get("name") in functions:
            m["name"] = functions[m["name"]]
        messages.append(m)
    return {**trace, "tools": tools, "messages": messages}, mapping


def shuffle_tools(trace: dict, seed: int) -> dict:
    """The tool list in an order drawn from (seed, trace id); the messages as they were."""
    tools = sorted(trace["tools"], key=lambda t: _hash("shuffle", seed, trace["id"], t["name"]))
    return {**trace, "tools": tools}


def called_names(trace: dict) -> set[str]:
    return {c["name"] for m in trace["messages"] for c in m.get("tool_calls") or []}


def irrelevant_tools(trace: dict) -> list[dict]:
    """The tools an irrelevance copy offers: the trace's list without every tool the trace calls anywhere (a tool
    called later could be the right answer to the first request too)."""
    called = called_names(trace)
    return [t for t in trace["tools"] if t["name"] not in called]


def irrelevant_copy(trace: dict) -> dict | None:
    """A copy of a tool trace that must be answered without a call: its called tools removed, the conversation up to
    the first assistant turn that calls a tool, then `IRRELEVANT_ANSWER`. None when no tool would be left."""
    tools = irrelevant_tools(trace)
    if not tools:
        return None
    messages = []
    for m in trace["messages"]:
        if m["role"] == "assistant" and m.get("tool_calls"):
            break
        messages.append(m)
    messages.append({"role": "assistant", "content": IRRELEVANT_ANSWER})
    meta = {**(trace.get("meta") or {}), "kind": "no_tool", "irrelevant_copy_of": trace["id"]}
    return {"id": trace["id"] + IRRELEVANT_SUFFIX, "source": trace["source"], "tools": tools, "messages": messages,
            "meta": meta}

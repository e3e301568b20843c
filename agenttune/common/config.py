"""The run configuration's defaults, from `config/schema.yaml` only.

Takes: a config (or one section of it) as read from YAML. Gives: a deep copy with every default of the schema
filled in: a missing key that has a `default` gets it; an object that is present gets its own properties' defaults,
and so does each object of an array; a missing object is created only when the schema gives it a default (usually
`default: {}`), then filled. Optional feature blocks without a default (`train.deepspeed`, `evaluate.bfcl`, ...)
stay absent, since their absence means "off".

Snakemake's `validate(..., set_default=True)` fills nested defaults only where the parent object exists, and the
CLI, the server, the benches and the tests do not go through Snakemake at all: they all call `with_defaults` here,
so that no module keeps a copy of a default (`DEFAULTS` dicts, `.get(key, default)`).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

# The repository holding the package (agenttune/common/config.py -> the folder above agenttune/).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@functools.cache
def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def section_schema(*keys: str, schema: dict | None = None) -> dict:
    """The schema of one section, e.g. section_schema("format"), section_schema("evaluate", "general"), or
    section_schema("data", "sources", "items") for the schema of each element of an array."""
    node = schema if schema is not None else load_schema()
    for key in keys:
        node = node["items"] if key == "items" and "properties" not in node else node["properties"][key]
    return node


def with_defaults(value, schema: dict | None = None):
    """`value` (a config, or the section that `schema` describes; default: the whole run schema) with the schema's
    defaults filled in, as a deep copy; `value` itself is not changed."""
    schema = schema if schema is not None else load_schema()
    return _fill(copy.deepcopy(value), schema)


def section_with_defaults(value: dict | None, *keys: str) -> dict:
    """One section of the run config with its defaults, e.g. section_with_defaults(cfg_format, "format"); a missing
    section (None) counts as empty."""
    return with_defaults({} if value is None else value, section_schema(*keys))


def _fill(value, schema: dict):
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_fill(item, schema["items"]) for item in value]
    return value

"""The configured raw sources (`data.sources` plus the demo traces): names and roles, checked before anything is read.

Its own small module because both the ingest job and the formatting job use it: the ingest job must not depend on
the formatting code (an edited template re-runs formatting, not ingestion; agenttune.common.deps).
"""

from __future__ import annotations

from agenttune.common.config import section_with_defaults

ROLES = ("traces", "general", "negatives")


class FormatError(ValueError):
    """Bad input to the data stage, naming file, line, trace id and what is wrong."""


def source_roles(sources: list[dict]) -> dict[str, str]:
    """Source name -> role for the configured sources; a name used twice or an unknown role is an error (the
    demo traces are source "demo"; a source's role decides what its traces become)."""
    roles: dict[str, str] = {}
    for i, source in enumerate(sources):
        name, role = source["name"], section_with_defaults(source, "data", "sources", "items")["role"]
        if name in roles:
            raise FormatError(f"data.sources[{i}]: source name '{name}' is used twice (the demo traces are 'demo')")
        if role not in ROLES:
            raise FormatError(f"data.sources[{i}] ('{name}'): unknown role {role!r} (known: {', '.join(ROLES)})")
        roles[name] = role
    return roles

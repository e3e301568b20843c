"""The trace formats: format name -> reader module (agenttune.traces.readers), and the lookup ingest uses."""

from __future__ import annotations

from types import ModuleType

# Adding a format: write readers/<module>.py and add it to this import and to READERS.
from agenttune.traces.readers import (agentinstruct, alpaca, bfcl, canonical, hf_dataset, openai_messages,
                                      seal_tools, sgd, sharegpt_tools)

READERS: dict[str, ModuleType] = {m.FORMAT: m for m in (
    canonical,
    agentinstruct,
    sharegpt_tools,
    openai_messages,
    bfcl,
    hf_dataset,
    alpaca,
    seal_tools,
    sgd,
)}
# hf_dataset hands each row to the reader of its inner format; it gets the registry from here rather than
# importing this module (an import circle).
hf_dataset.INNER_READERS.update(READERS)


def get_reader(fmt: str) -> ModuleType:
    """The reader module for a format name."""
    try:
        return READERS[fmt]
    except KeyError:
        known = ", ".join(sorted(READERS))
        raise ValueError(f"unknown trace format {fmt!r}; known formats: {known}") from None

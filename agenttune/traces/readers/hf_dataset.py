"""Hugging Face dataset reader: rows of a dataset on the Hub (or in the local HF cache) mapped by another reader.

Takes: a source path of the form `<dataset name>?split=<split>&format=<reader format>`, e.g.
`THUDM/AgentInstruct?split=db&format=agentinstruct`; `split` defaults to "train". The dataset is loaded with
`datasets.load_dataset(name, split=split)` (memory-mapped Arrow, so rows stream) and each row is handed to the
named reader's `to_trace`. `datasets` is imported only when such a source is read.
Gives: one RawRecord per row (`unit` "row", line = 1-based row number, raw id = the row's `id`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Iterator
from urllib.parse import parse_qs

from agenttune.traces.readers.common import RawRecord, UnreadableFile, expect_object, raw_id_of

FORMAT = "hf_dataset"
# Format name -> reader module, filled by the registry (agenttune.traces.formats) when it is imported; importing
# the registry from here would be an import circle.
INNER_READERS: dict[str, ModuleType] = {}


def parse_source(path: Path | str) -> tuple[str, str, str]:
    """(dataset name, split, inner format) from `<name>?split=<split>&format=<format>`."""
    name, _, query = str(path).partition("?")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    if not name or "format" not in options:
        raise UnreadableFile(f"expected '<dataset name>?split=<split>&format=<reader format>', got {str(path)!r}")
    return name, options.get("split", "train"), options["format"]


def inner_reader(fmt: str) -> ModuleType:
    """The reader that maps this dataset's rows."""
    if fmt not in INNER_READERS or fmt == FORMAT:
        known = ", ".join(sorted(set(INNER_READERS) - {FORMAT}))
        raise UnreadableFile(f"unknown trace format {fmt!r} for the rows of a dataset; known formats: {known}")
    return INNER_READERS[fmt]


def records(path: Path | str) -> Iterator[RawRecord]:
    name, split, inner = parse_source(path)
    inner_reader(inner)
    import datasets  # heavy, and only needed here

    for index, row in enumerate(datasets.load_dataset(name, split=split), start=1):
        yield RawRecord(index, raw_id_of(row), {"format": inner, "row": row}, unit="row")


def to_trace(record_data: object, source: str) -> dict:
    record = expect_object(record_data)
    return inner_reader(record["format"]).to_trace(record["row"], source)

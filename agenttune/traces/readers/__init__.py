"""Readers: map raw trace formats onto the canonical trace model (docs/trace-schema.md).

A reader is one module in this package with:

    FORMAT = "name"
    def records(path: Path) -> Iterator[RawRecord]   # one RawRecord per input record, in file order
    def to_trace(record_data, source: str) -> dict    # one raw record -> one canonical trace; raises TraceError

and one entry in the registry, `agenttune.traces.formats`; what readers share is in `readers/common.py`.
`agenttune.traces.ingest` drives readers (validation, quarantine, dedup, accounting); docs/readers.md shows how
to add one. This `__init__` imports nothing, so that a reader's imports never run the registry.
"""

"""Traces stage: raw trace files -> canonical traces (docs/trace-schema.md): the canonical model, one reader per raw
format (readers/), the format registry and ingest."""

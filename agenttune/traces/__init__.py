"""Traces: the canonical trace model (docs/trace-schema.md) and the readers that map raw formats onto it."""

from agenttune.traces.canonical import TraceError, read_traces, validate_trace

__all__ = ["TraceError", "read_traces", "validate_trace"]

"""Demo data: mock tools with deterministic executors and a seeded generator of canonical tool-use traces.

Gives `generate_traces(n, seed, no_tool_share)` from `generator`, and the tool catalogue `TOOLS` with
`execute(name, arguments)` from `tools`.
"""

"""Demo data: mock tools with deterministic executors and a seeded generator of canonical tool-use traces.

Gives `generate_traces(n, seed, no_tool_share)` from `generator`, and the tool catalogue `TOOLS` with
`execute(name, arguments)` from `tools`.
"""

from agenttune.demo.generator import generate_traces
from agenttune.demo.tools import TOOLS, TOOLS_BY_NAME, execute, safe_eval

__all__ = ["TOOLS", "TOOLS_BY_NAME", "execute", "generate_traces", "safe_eval"]

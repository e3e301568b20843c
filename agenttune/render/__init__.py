"""Rendering: canonical traces -> formatted chat samples, and model outputs -> calls, one module per prompt template.

A sample is a dict: `{"id", "trace_id", "source", "kind", "task", "template", "tool_format", "messages": [...]}`
(agenttune.data.format adds a few more keys) where each message is `{"role": "system"|"user"|"assistant",
"content": str, "loss": bool}` and assistant messages also carry `"tool_calls"` (the canonical calls they make,
`[]` for an answer) so evaluation knows the expected call. agenttune.render.samples draws a trace's templates and
tool format and builds the sample; agenttune.render.parsing holds what the parsers return.

A template is one module in this package with:

    NAME = "name"                       # the module's own name: samples, the config and evaluation use it
    STOP = ("...",)                     # stop strings for generation (see below)
    ONE_CALL_PER_STEP = True | False    # its format holds one call per step: parallel calls become consecutive steps
    def render(trace, tool_format) -> list[message]
    def parse(text) -> ParsedOutput     # what the model wrote for one step, read back

and one line in `TEMPLATE_MODULES` below. STOP holds text that only appears when a model runs on past its turn,
never inside a valid output of any template (evaluation stops each item on its template's strings; keeping them
apart from every template's outputs lets one stop list serve a model whatever template it was tuned on).
Everything keyed by template name comes from this registry: `TEMPLATES`, `PARSERS`, `parse(template, text)`,
each template's stops (`get_template(name).STOP`); config/schema.yaml lists the same names under
`format.templates` (tests/test_render.py fails when they differ). docs/formatting.md shows how to add one.

The family templates (qwen25, qwen3, llama31, mistral) also have `render_text(messages, tools,
add_generation_prompt)`, `model_text(message)`, `recognizes(text)`, `TURN_OPEN` and `TURN_END`: their samples carry
OpenAI-style messages (roles system/user/assistant/tool) that the tokenize and evaluate stages render to text
through agenttune.render.families (`FAMILIES` lists them). Those whose render changes with the last user turn
(mistral, qwen3) set `SPLIT_AT_USER_TURNS = True`: the data stage cuts their train/val samples into one per user
turn (agenttune.data.format.per_user_turn), so each trained turn is trained in the context it is served in.

`passthrough` is not a prompt template to choose: it keeps already-rendered text (AgentInstruct) and general chat,
and has no parser (its samples make no evaluation items).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

from agenttune.render import passthrough
from agenttune.render.parsing import ParsedOutput

# The prompt templates a config can choose (`format.templates`), one module each.
TEMPLATE_MODULES = [
    "react",
    "openai_json",
    "autogpt",
    "tool_call",
    "qwen25",
    "qwen3",
    "llama31",
    "mistral",
]

TEMPLATES: dict[str, ModuleType] = {}  # template name -> module
for _module_name in TEMPLATE_MODULES:
    _module = importlib.import_module(f"{__name__}.{_module_name}")
    TEMPLATES[_module.NAME] = _module

ALL: dict[str, ModuleType] = {**TEMPLATES, passthrough.NAME: passthrough}
# Native tool formats of model families (agenttune.render.families): templates whose samples keep OpenAI-style
# messages and are rendered to text by the model's chat template or the module's own `render_text`.
FAMILIES: dict[str, ModuleType] = {name: m for name, m in TEMPLATES.items() if hasattr(m, "render_text")}
PARSERS: dict[str, Callable[[str], ParsedOutput]] = {name: module.parse for name, module in TEMPLATES.items()}

# Templates whose render reads the model's tokenizer: tool_call (the model's own tool prompt, if its chat template has
# one) and the family templates (native or project mode, agenttune.render.families).
TOKENIZER_TEMPLATES: tuple[str, ...] = ("tool_call", *FAMILIES)


def needs_tokenizer(templates: dict[str, float]) -> bool:
    """Whether rendering in `templates` (format.templates: name -> weight) reads the model's tokenizer: a template
    of TOKENIZER_TEMPLATES with a weight above 0 (the pipeline then gives the step the model folder)."""
    return any(templates.get(name, 0) > 0 for name in TOKENIZER_TEMPLATES)


def get_template(name: str) -> ModuleType:
    try:
        return ALL[name]
    except KeyError:
        raise KeyError(f"unknown template '{name}' (known: {', '.join(sorted(ALL))})") from None


def parse(template: str, text: str) -> ParsedOutput:
    """Parse `text` with the parser of prompt template `template`; KeyError for an unknown template."""
    try:
        parser = PARSERS[template]
    except KeyError:
        raise KeyError(f"no parser for prompt template {template!r}; known: {', '.join(sorted(PARSERS))}") from None
    return parser(text)

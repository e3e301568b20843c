"""Native tool-call formats of model families (qwen25, qwen3, llama31, mistral): what the family templates share.

Takes: a canonical trace (`family_messages`), or a family sample's messages and tools plus the model's chat template
(`FamilyText`).
Gives: the sample messages of a family template, and a sample's full text with its trained character spans, as
that family's serving stack renders it.

The sample contract of a family template (docs/formatting.md, "Native tool formats per family"):
  sample["tools"]           the canonical tools offered (the chat template renders them itself)
  sample["reasoning_loss"]  whether `<think>` reasoning is trained (format.reasoning_loss)
  messages                  OpenAI-style turns, each with "loss":
      {"role": "system" | "user", "content"}
      {"role": "assistant", "content": the text beside the calls (thought or answer), "tool_calls": canonical
       [{"name", "arguments"}], "reasoning"?: str, "call_ids"?: [str] (families whose format carries call ids)}
      {"role": "tool", "content", "name", "tool_call_id"?: str}
so that evaluation reads `tool_calls` as for every template, and the text is rendered by the tokenize stage and
by evaluation, through one path (`FamilyText`), in one of two modes:
  - "native": the tokenizer's chat template renders `tools=` in this family's format (found by rendering a probe
    conversation): the text is the template's render of the OpenAI-style messages with `tools=`, i.e. what
    `apply_chat_template(..., tools=...)` gives the serving stack;
  - "project": the tokenizer's chat template ignores `tools=` (SmolLM2, the tests), or `format.chat_template_tools:
    builtin`: the family module's own Python template (written from the family's documented format) renders it.
A tokenizer without a chat template, or one that renders `tools=` in another format, is a config error naming
`format.templates.<name>` (unless builtin).

Trained spans are located in the FULL render, never by prefix renders (Qwen3 drops the `<think>` of turns before
the last user query; Mistral writes the tool list and system text before the last user turn): each trained
assistant turn is rendered twice more with its content, reasoning and call arguments replaced by two different
markers; where the two renders (and the full one) start and stop differing brackets the turn's variable text, the
family's turn opening before it and its end-of-turn token after it bound the span; an end-of-turn token between the
opening and the variable text is an error (the turn was not found). Labels cover the turn from its first
generated character through the end-of-turn token; with reasoning out of the loss, from just after `</think>`.
"""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Callable

from agenttune.render.common import turns

FAMILY_TOOL_FORMAT = "family"  # a family template writes tools in its own documented form, not a tool format
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class FamilyConfigError(ValueError):
    """A tokenizer that cannot render a family template; names `format.templates.<name>`."""


def call_id(*parts: object, length: int = 9) -> str:
    """A deterministic alphanumeric call id from the given parts (Mistral's format wants exactly 9 characters)."""
    n = int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:16], "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(_ID_ALPHABET))
        out.append(_ID_ALPHABET[r])
    return "".join(out)


def family_messages(trace: dict, one_call_per_step: bool, with_ids: bool = False) -> list[dict]:
    """The trace as a family sample's messages (module docstring). `with_ids`: assistant calls get `call_ids`
    and results `tool_call_id` (hash of trace id, turn and call index)."""
    out: list[dict] = []
    for k, turn in enumerate(turns(trace, one_call_per_step)):
        if turn["role"] != "assistant":
            out.append({"role": turn["role"], "content": turn["content"], "loss": False})
            continue
        calls = [{"name": c["name"], "arguments": c["arguments"]} for c in turn["calls"]]
        msg = {"role": "assistant", "content": turn["content"], "loss": turn["loss"], "tool_calls": calls}
        if turn.get("reasoning"):
            msg["reasoning"] = turn["reasoning"]
        ids = [call_id(trace["id"], k, j) for j in range(len(calls))]
        if with_ids and calls:
            msg["call_ids"] = ids
        out.append(msg)
        for j, result in enumerate(turn["results"]):
            tool = {"role": "tool", "content": result["content"], "loss": False, "name": result["name"]}
            if with_ids:
                tool["tool_call_id"] = ids[j]
            out.append(tool)
    return out


def api_tools(tools: list[dict] | None) -> list[dict] | None:
    """Tools as `apply_chat_template(tools=...)` takes them; None for no tools (no tool prompt at all)."""
    return [{"type": "function", "function": t} for t in tools] if tools else None


def api_messages(messages: list[dict]) -> list[dict]:
    """Sample messages as OpenAI-style chat messages (what a chat template with tool support reads)."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            msg = {"role": "assistant", "content": m["content"]}
            if m.get("reasoning"):
                msg["reasoning_content"] = m["reasoning"]
            if m.get("tool_calls"):
                ids = m.get("call_ids") or [None] * len(m["tool_calls"])
                msg["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]},
                                      **({"id": i} if i else {})} for c, i in zip(m["tool_calls"], ids)]
            out.append(msg)
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": m["content"], "name": m.get("name", ""),
                        **({"tool_call_id": m["tool_call_id"]} if m.get("tool_call_id") else {})})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


# --- which mode, and the probe ------------------------------------------------------------------------------------

PROBE_TOOL = {"name": "probe_tool_3f8a", "description": "A probe tool.",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
PROBE_REASONING = "PROBE-REASONING-7d1c"
PROBE_MESSAGES = [
    {"role": "system", "content": "PROBE-SYSTEM-9c41e", "loss": False},
    {"role": "user", "content": "PROBE-USER-5b2d7", "loss": False},
    {"role": "assistant", "content": "", "loss": True, "reasoning": PROBE_REASONING,
     "tool_calls": [{"name": PROBE_TOOL["name"], "arguments": {"q": "x"}}], "call_ids": ["Pr0beCa11"]},
    {"role": "tool", "content": "PROBE-RESULT-2e6f", "loss": False, "name": PROBE_TOOL["name"],
     "tool_call_id": "Pr0beCa11"},
    {"role": "assistant", "content": "PROBE-ANSWER-8a0b", "loss": True, "tool_calls": []},
]

NativeRender = Callable[[list[dict], "list[dict] | None", bool], str]


def jinja_renderer(chat_template: str, variables: dict) -> NativeRender:
    """render(api messages, api tools, add_generation_prompt) -> text: the chat template as transformers runs it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        texts, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=chat_template,
                                         add_generation_prompt=add_generation_prompt, **variables)
        return texts[0]

    return render


def tokenizer_template(tokenizer) -> tuple[str | None, dict]:
    """A transformers tokenizer's default chat template (None if it has none) and the variables it renders with."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    variables = {k: v for k, v in dict(tokenizer.special_tokens_map).items() if isinstance(v, str)}
    return (template if isinstance(template, str) else None), variables


def choose_mode(module: ModuleType, chat_template: str | None, native: NativeRender | None,
                chat_template_tools: str) -> tuple[str, str]:
    """("native" | "project", why) for family template `module` and this chat template; FamilyConfigError when
    neither applies."""
    key = f"format.templates.{module.NAME}"
    if chat_template_tools == "builtin":
        return "project", "format.chat_template_tools is builtin"
    if not chat_template:
        raise FamilyConfigError(
            f"{key}: the tokenizer has no chat template, so {module.NAME} cannot be rendered as the model would be "
            "served; add the model's chat template to its tokenizer or set format.chat_template_tools: builtin to "
            f"use the project's own {module.NAME} template")
    plain = [{"role": "system", "content": "PROBE-SYSTEM-9c41e"}, {"role": "user", "content": "PROBE-USER-5b2d7"}]
    try:
        without = native(plain, None, False)
        with_tools = native(plain, api_tools([PROBE_TOOL]), False)
    except Exception as exc:  # noqa: BLE001 - any template failure is the user's template, named below
        raise FamilyConfigError(f"{key}: the tokenizer's chat template fails on a system and a user turn with "
                                f"tools=: {exc}") from None
    if without == with_tools:
        return "project", "the tokenizer's chat template ignores tools="
    try:
        probe = native(api_messages(PROBE_MESSAGES), api_tools([PROBE_TOOL]), False)
    except Exception as exc:  # noqa: BLE001
        raise FamilyConfigError(f"{key}: the tokenizer's chat template handles tools= but fails on a tool-calling "
                                f"conversation in OpenAI form ({exc}); set format.chat_template_tools: builtin to "
                                f"use the project's own {module.NAME} template") from None
    if module.recognizes(probe):
        return "native", "the tokenizer's chat template renders tools= in this family's format"
    from agenttune.render import FAMILIES  # the registry imports this module

    other = [name for name, m in FAMILIES.items() if m is not module and m.recognizes(probe)]
    looks = f"it looks like {', '.join(other)}" if other else "a format the project does not know"
    raise FamilyConfigError(
        f"{key}: the tokenizer's chat template renders tools= in another format ({looks}), so samples in "
        f"{module.NAME}'s format would not be what this model is served with; choose the template of the model's "
        f"family, or set format.chat_template_tools: builtin to force the project's own {module.NAME} template")


class FamilyText:
    """A family template's full text and trained spans for one tokenizer (one mode, chosen once)."""

    def __init__(self, module: ModuleType, chat_template: str | None, variables: dict, chat_template_tools: str,
                 log=print):
        self.module = module
        self.native = jinja_renderer(chat_template, variables) if chat_template else None
        self.mode, why = choose_mode(module, chat_template, self.native, chat_template_tools)
        log(f"{module.NAME}: {self.mode} mode ({why})")

    @classmethod
    def from_tokenizer(cls, module: ModuleType, tokenizer, chat_template_tools: str, log=print) -> "FamilyText":
        template, variables = tokenizer_template(tokenizer)
        return cls(module, template, variables, chat_template_tools, log)

    def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
        if self.mode == "native":
            return self.native(api_messages(messages), api_tools(tools), add_generation_prompt)
        return self.module.render_text(messages, tools, add_generation_prompt)

    def prompt(self, messages: list[dict], tools: list[dict] | None) -> str:
        """The generation prompt after `messages` (evaluation)."""
        return self.render(messages, tools, add_generation_prompt=True)

    def text_and_spans(self, messages: list[dict], tools: list[dict] | None,
                       reasoning_loss: bool) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the character span of every trained assistant turn (module docstring)."""
        full = self.render(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and m.get("loss") is not False:
                spans.append(self._locate(messages, tools, i, full, reasoning_loss))
        return full, spans

    def _locate(self, messages, tools, i: int, full: str, reasoning_loss: bool) -> tuple[int, int]:
        where = f"{self.module.NAME} ({self.mode} mode), assistant turn {i}"
        v1, v2 = (self.render(messages[:i] + [_marked(messages[i], k)] + messages[i + 1:], tools) for k in (1, 2))
        # The text both marker renders share with the full render, before and after the turn's variable text (the
        # markers' JSON quotes may differ from the real values: the bounds only need to lie inside the turn).
        p = _common_prefix(v1, v2)
        if p == len(v1):
            raise ValueError(f"{where}: the template writes none of the turn's text, calls or reasoning")
        p = min(p, _common_prefix(full, v1))
        s = min(_common_suffix(v1[p:], v2[p:]), _common_suffix(full[p:], v1[p:]))
        opens = [(full.rfind(o, 0, p), o) for o in self.module.TURN_OPEN]
        at, opening = max(opens)
        if at < 0:
            raise ValueError(f"{where}: no turn opening ({' or '.join(self.module.TURN_OPEN)}) before the turn")
        start = at + len(opening)
        varied_end = len(full) - s
        ends = [(full.find(e, varied_end), e) for e in self.module.TURN_END]
        ends = [(j, e) for j, e in ends if j >= 0]
        if not ends:
            raise ValueError(f"{where}: no end-of-turn token ({' or '.join(self.module.TURN_END)}) after the turn")
        j, closing = min(ends)
        end = j + len(closing)
        if any(full.find(e, start, p) >= 0 for e in self.module.TURN_END):
            raise ValueError(f"{where}: an end-of-turn token lies between the turn opening and the turn's text")
        think_end = getattr(self.module, "THINK_END", None)
        if not reasoning_loss and think_end:
            k = full.find(think_end, start, j)
            if k >= 0:
                start = k + len(think_end)
        return start, end


def _marked(message: dict, k: int) -> dict:
    """The message with everything the model writes in it replaced by marker k (private-use characters, which
    start and end differently for k = 1 and 2, so two renders differ exactly around the turn's variable text)."""
    a, b = ("\ue000", "\ue001") if k == 1 else ("\ue002", "\ue003")
    marked = dict(message, content=f"{a}content{b}" if message["content"] else "")
    if message.get("reasoning"):
        marked["reasoning"] = f"{a}reasoning{b}"
    marked["tool_calls"] = [{"name": c["name"], "arguments": {f"{a}arg": f"{j}{b}"}}
                            for j, c in enumerate(message.get("tool_calls") or [])]
    if not marked["content"] and not marked["tool_calls"]:
        marked["content"] = f"{a}content{b}"
    return marked


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (binary search over C-level slice comparisons: texts are long)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo

"""Chat encoding: a rendered sample -> token ids with labels masked to the trained assistant turns.

Takes: samples (agenttune.render's contract, `messages` of `{"role", "content", "loss"}`; family-template samples
(qwen25, qwen3, llama31, mistral) are rendered by agenttune.render.families instead, see below) and a tokenizer folder
(`tokenizer.json` + a chat template) or a transformers tokenizer.
Gives: `ChatEncoder.encode` -> one `Encoded` (ids, labels, truncated) or `Dropped` (why) per sample, in order;
`encode_sample` and `encode_sample_reference` for one sample with a transformers tokenizer.

Labels are -100 everywhere except the trained turns: assistant turns whose `loss` is not false, from their first
content token through the special token that closes the turn (`<|im_end|>` for ChatML). System, user and tool turns
are context. A token is trained when its first character lies in a trained span.

How a sample is encoded (`ChatEncoder`), without the O(turns^2) prefix renders of the reference path:
1. Layout: per distinct sequence of roles, the chat template is rendered once with marker contents; the text
   around the markers (role headers, end-of-turn tokens, a default system prompt) is cached. A sample's text is
   that text with its contents in place, so each content's character span is known by construction.
2. Check: every sample's text is compared with the chat template's own render of it (one batched Jinja call); a
   sample that differs (a template that edits content, e.g. trims it) goes through the reference path instead.
3. Tokens: the text is cut at the tokenizer's added tokens, which is what `tokenizers` does first inside encode:
   the pieces between them are tokenized independently of each other. Each distinct piece is batch-encoded once
   per shard by the Rust tokenizer (task prompts and tool lists repeat across samples) and the ids are joined.
   Tokenizers where that is not exact (added tokens that strip whitespace or are normalized, a pre-tokenizer that
   treats the first piece specially) are encoded whole; a few samples per encoder are cross-checked against
   whole-text encoding and any difference switches the encoder to whole-text encoding.
`encode_sample_reference` is the slow, obviously-correct path (prefix renders with the generation prompt,
whole-text offsets); tests check that both give identical ids and labels on all real data.

Family templates (agenttune.render.families): the full text is the model's chat template's render with `tools=`
(native mode) or the family module's own template (project mode); each trained turn's span is located inside that
full text (their templates are not prefix-stable), and the text is encoded whole with offsets.

Over-long samples (> max_len tokens): `drop`, or `truncate` after the last whole trained turn that fits; a sample
that cannot be kept (too long, no whole trained turn fits, no trained token) comes back as `Dropped` with its reason.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import sha256_file
from agenttune.render import FAMILIES
from agenttune.render.families import FamilyText

IGNORE_INDEX = -100
# What a sample longer than max_len becomes when the caller does not say: the schema's tokenize.overlong.
DEFAULT_OVERLONG = section_with_defaults({}, "tokenize")["overlong"]
# A family sample without `reasoning_loss` (written by hand): the schema's format.reasoning_loss.
DEFAULT_REASONING_LOSS = section_with_defaults({}, "format")["reasoning_loss"]
DROP_REASONS = ("too_long", "no_whole_turn_fits", "no_trained_token")
_MARK = "\ue000{}\ue001"  # private-use characters: marker contents for learning a template's layout


class SampleDropped(Exception):
    """A sample that cannot be kept; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def chat_messages(sample: dict) -> list[dict]:
    """The messages as the chat template sees them (role and content only), checked."""
    messages = sample.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"sample {sample.get('id')!r}: field 'messages': expected a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"sample {sample.get('id')!r}: field 'messages[{i}]': expected role and content strings")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def trained_turns(sample: dict) -> list[bool]:
    """Assistant turns are trained unless their `loss` is false (AgentInstruct's per-turn flags); others never."""
    return [m.get("role") == "assistant" and m.get("loss") is not False for m in sample["messages"]]


def _turn_end(text_after: str, eos: str | None, specials: Sequence[str]) -> str | None:
    """The special token that closes an assistant turn: the eos token when the template writes it right after the
    content, else the (longest) added token found there; None if the template writes plain text there."""
    if eos and text_after.startswith(eos):
        return eos
    found = [s for s in specials if text_after.startswith(s)]
    return max(found, key=len) if found else None


def _fit(ids: np.ndarray, labels: np.ndarray, spans: list[tuple[int, int]], max_len: int,
         overlong: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Apply max_len. `spans` are the trained token ranges; returns (ids, labels, truncated)."""
    if not any(a < b for a, b in spans):
        raise SampleDropped("no_trained_token", "no assistant turn with loss")
    n = len(ids)
    if n <= max_len:
        return ids, labels, False
    if overlong == "drop":
        raise SampleDropped("too_long", f"{n} tokens > max_len {max_len}")
    if overlong != "truncate":
        raise ValueError(f"tokenize.overlong: unknown value '{overlong}' (expected drop or truncate)")
    # Cut after the last whole trained turn that fits, so no turn is cut in half.
    keep = max((b for a, b in spans if a < b <= max_len), default=0)
    if keep == 0:
        raise SampleDropped("no_whole_turn_fits", f"{n} tokens > max_len {max_len} and no whole assistant turn fits")
    return ids[:keep], labels[:keep], True


def _labels_from_starts(ids: np.ndarray, starts: np.ndarray, char_spans: list[tuple[int, int]]):
    """Labels and trained token ranges from token start offsets (nondecreasing) and trained character spans."""
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    tok_spans = []
    for s, e in char_spans:
        a, b = int(np.searchsorted(starts, s, "left")), int(np.searchsorted(starts, e, "left"))
        labels[a:b] = ids[a:b]
        tok_spans.append((a, b))
    return labels, tok_spans


def _prefix_spans(render, messages: list[dict], flags: list[bool], full: str, eos: str | None,
                  specials: Sequence[str]) -> list[tuple[int, int]]:
    """Trained character spans found the slow way: the prefix before assistant turn i, rendered with the generation
    prompt, ends where the turn's content starts (one template render per trained turn)."""
    spans = []
    for i, (msg, trained) in enumerate(zip(messages, flags)):
        if not trained:
            continue
        prefix = render(messages[:i])
        if not full.startswith(prefix):
            raise ValueError("chat template is not prefix-stable; cannot locate assistant turns")
        start = len(prefix)
        end = start + len(msg["content"])
        if full[start:end] != msg["content"]:
            raise ValueError(f"assistant turn {i} not found where the chat template should have put it")
        closing = _turn_end(full[end:], eos, specials)
        if closing is None:
            raise ValueError(f"assistant turn {i}: the chat template closes it with no special token")
        spans.append((start, end + len(closing)))
    return spans


def encode_sample_reference(tokenizer, sample: dict, max_len: int,
                            overlong: str = DEFAULT_OVERLONG) -> tuple[list[int], list[int]]:
    """The slow reference path with a transformers tokenizer: O(turns^2) template renders, whole-text offsets.
    Raises SampleDropped."""
    messages = chat_messages(sample)
    flags = trained_turns(sample)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    specials = [t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]
    render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    spans = _prefix_spans(render, messages, flags, full, tokenizer.eos_token, specials)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    labels, tok_spans = _labels_from_starts(ids, starts, spans)
    ids, labels, _ = _fit(ids, labels, tok_spans, max_len, overlong)
    return ids.tolist(), labels.tolist()


@dataclass
class Encoded:
    id: str
    input_ids: np.ndarray  # int32
    labels: np.ndarray     # int32, IGNORE_INDEX where not trained
    truncated: bool


@dataclass
class Dropped:
    id: str
    reason: str
    detail: str


@dataclass
class _Layout:
    glues: list[str]            # text before content 0, between contents, after the last content
    ends: dict[int, str | None]  # assistant message index -> the special token closing it
    n_specials: int             # added tokens the template itself writes


class _Piece:
    """One distinct run of text between added tokens, encoded once: its ids and its Encoding (for char lookups)."""

    __slots__ = ("ids", "encoding")

    def __init__(self, encoding):
        self.ids = np.asarray(encoding.ids, dtype=np.int32)
        self.encoding = encoding

    def first_token_at_or_after(self, pos: int) -> int:
        t = self.encoding.char_to_token(pos)
        if t is None:
            return next((k for k, (s, _) in enumerate(self.encoding.offsets) if s >= pos), len(self.ids))
        return t + (self.encoding.token_to_chars(t)[0] < pos)


def _chat_template_text(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    # None: rendering a sample says so (a family template names its config key: agenttune.render.families)
    return template if isinstance(template, str) else None


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatEncoder:
    """Fast, exact chat encoding with the `tokenizers` backend and the chat template (see the module docstring).

    Build it with `from_folder(path)` (no transformers tokenizer is loaded: that takes seconds) or `from_hf(tok)`.
    `check_tokens`: how many samples to cross-check against whole-text encoding (-1: all) before trusting the
    piecewise encoding. `piecewise=False` forces whole-text encoding (to measure what pieces buy)."""

    def __init__(self, backend, chat_template: str | None, variables: dict, eos_token: str | None, *,
                 tokenizer_sha256: str, check_tokens: int = 16, piecewise: bool = True, batch_size: int = 512,
                 folder: str | Path | None = None, log=print):
        self.backend = backend
        self.chat_template = chat_template
        self.folder = folder
        self.log = log
        self._families: dict[tuple[str, str], FamilyText] = {}
        self.variables = {k: v for k, v in variables.items() if isinstance(v, (str, list))}
        self.eos_token = eos_token
        self.tokenizer_sha256 = tokenizer_sha256
        self.check_tokens = check_tokens
        self.batch_size = batch_size
        added = backend.get_added_tokens_decoder()
        self.special_ids = {t.content: i for i, t in added.items()}
        self.specials = sorted(self.special_ids, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")") if self.specials else None
        self.piecewise = piecewise and self._piecewise_is_exact(added)
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        self._pieces: dict[str, _Piece] = {}
        self.counts: Counter = Counter()

    # construction

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> "ChatEncoder":
        from tokenizers import Tokenizer

        folder = Path(folder)
        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.exists():
            raise FileNotFoundError(f"{tokenizer_json} missing: the tokenize stage needs a fast (tokenizers) tokenizer")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        variables = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        variables = {k: v for k, v in variables.items() if v is not None}
        return cls(Tokenizer.from_file(str(tokenizer_json)), _chat_template_text(folder, config), variables,
                   variables.get("eos_token"), tokenizer_sha256=sha256_file(tokenizer_json), folder=folder, **kwargs)

    @classmethod
    def from_hf(cls, tokenizer, **kwargs) -> "ChatEncoder":
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not isinstance(template, str):
            template = None  # rendering says so (a family template names its config key)
        backend = tokenizer.backend_tokenizer
        sha = hashlib.sha256(backend.to_str().encode()).hexdigest()
        return cls(backend, template, dict(tokenizer.special_tokens_map), tokenizer.eos_token,
                   tokenizer_sha256=sha, **kwargs)

    def identity(self) -> dict:
        return {
            "tokenizer_sha256": self.tokenizer_sha256,
            "chat_template_sha256": hashlib.sha256((self.chat_template or "").encode()).hexdigest(),
            "special_tokens": dict(sorted((k, v) for k, v in self.variables.items() if isinstance(v, str))),
            "vocab_size": self.backend.get_vocab_size(with_added_tokens=True),
        }

    def _piecewise_is_exact(self, added: dict) -> bool:
        """True when encoding the text between added tokens piece by piece equals encoding the whole text: added
        tokens are matched on the raw text (not normalized, or no normalizer) and eat no neighbouring whitespace,
        and the pre-tokenizer does not treat the first piece of a text differently (Metaspace prepend 'first')."""
        if not self.specials:
            return False
        spec = json.loads(self.backend.to_str())
        has_normalizer = spec.get("normalizer") is not None
        for t in added.values():
            if t.lstrip or t.rstrip or t.single_word or (t.normalized and has_normalizer):
                return False
        return '"prepend_scheme": "first"' not in json.dumps(spec.get("pre_tokenizer"))

    # rendering

    def render(self, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list[str]:
        from transformers.utils.chat_template_utils import render_jinja_template

        if self.chat_template is None:
            where = f"tokenizer folder {self.folder}" if self.folder else "the tokenizer"
            raise ValueError(f"{where} has no chat template (chat_template.jinja or tokenizer_config.json)")
        texts, _ = render_jinja_template(conversations=conversations, chat_template=self.chat_template,
                                         add_generation_prompt=add_generation_prompt, **self.variables)
        return texts

    def _layout(self, roles: tuple[str, ...]) -> _Layout | None:
        if roles in self._layouts:
            return self._layouts[roles]
        probe = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
        try:
            text = self.render([probe])[0]
        except Exception:  # the template refuses this role sequence; the reference path will say why
            self._layouts[roles] = None
            return None
        glues, pos, layout = [], 0, None
        for i in range(len(roles)):
            mark = _MARK.format(i)
            j = text.find(mark, pos)
            if j < 0 or text.count(mark) != 1:
                break
            glues.append(text[pos:j])
            pos = j + len(mark)
        else:
            glues.append(text[pos:])
            if not any("\ue000" in g for g in glues):
                ends = {i: _turn_end(glues[i + 1], self.eos_token, self.specials)
                        for i, r in enumerate(roles) if r == "assistant"}
                n_specials = sum(len(self._special_re.findall(g)) for g in glues) if self._special_re else 0
                layout = _Layout(glues, ends, n_specials)
        self._layouts[roles] = layout
        return layout

    # encoding

    def encode(self, samples: Sequence[dict], max_len: int,
               overlong: str = DEFAULT_OVERLONG) -> list[Encoded | Dropped]:
        """Encode samples in order; a sample that cannot be kept comes back as Dropped (never silently)."""
        out: list[Encoded | Dropped] = []
        for k in range(0, len(samples), self.batch_size):
            out.extend(self._encode_batch(samples[k:k + self.batch_size], max_len, overlong))
        return out

    def _encode_batch(self, samples: Sequence[dict], max_len: int, overlong: str) -> list[Encoded | Dropped]:
        family = [i for i, s in enumerate(samples) if s.get("template") in FAMILIES]
        if not family:
            return self._encode_chat_batch(samples, max_len, overlong)
        results = {i: self._encode_family(samples[i], max_len, overlong) for i in family}
        rest = [i for i in range(len(samples)) if i not in results]
        if rest:
            results.update(zip(rest, self._encode_chat_batch([samples[i] for i in rest], max_len, overlong)))
        return [results[i] for i in range(len(samples))]

    # family templates (agenttune.render.families): full text in the family's format, spans located in it

    def family_text(self, template: str, render_mode: str | None = None) -> FamilyText:
        """The FamilyText of a family template for this tokenizer. `render_mode` is what the data stage recorded:
        "project" keeps the project's own template (format.chat_template_tools: builtin, or a template without
        tools), "native" must find this tokenizer's template rendering the family's format."""
        requested = "builtin" if render_mode == "project" else "auto"
        key = (template, requested)
        if key not in self._families:
            module = FAMILIES[template]
            self._families[key] = FamilyText(module, self.chat_template, self.variables, requested, self.log)
            missing = [t for t in module.TURN_END if t not in self.special_ids]
            if self._families[key].mode == "project" and missing:
                self.log(f"{template}: the tokenizer lacks the family's {', '.join(missing)}: they are written as "
                         "text, and a turn's first or last token may straddle its edge (labels follow the tokens that "
                         "start inside a turn)")
        family = self._families[key]
        if render_mode == "native" and family.mode != "native":
            raise ValueError(f"format.templates.{template}: the samples were rendered for the model's own chat "
                             f"template (render_mode native), but this tokenizer's template is used in "
                             f"{family.mode} mode; were the samples made with another model?")
        return family

    def _encode_family(self, sample: dict, max_len: int, overlong: str) -> Encoded | Dropped:
        chat_messages(sample)  # the same shape checks as for every sample
        family = self.family_text(sample["template"], sample.get("render_mode"))
        text, spans = family.text_and_spans(sample["messages"], sample.get("tools"),
                                            sample.get("reasoning_loss", DEFAULT_REASONING_LOSS))
        self.counts[f"family:{sample['template']}:{family.mode}"] += 1
        enc = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int32)
        starts = np.asarray([a for a, _ in enc.offsets], dtype=np.int64)
        labels, tok_spans = _labels_from_starts(ids, starts, spans)
        return self._finish(sample, ids, labels, tok_spans, max_len, overlong)

    def _encode_chat_batch(self, samples: Sequence[dict], max_len: int,
                           overlong: str) -> list[Encoded | Dropped]:
        msgs = [chat_messages(s) for s in samples]
        flags = [trained_turns(s) for s in samples]
        built = [self._build_text(m) for m in msgs]
        rendered = self._render_checked(samples, msgs)
        fast, slow = [], []
        for i, (b, text) in enumerate(zip(built, rendered)):
            (fast if b is not None and b[0] == text else slow).append(i)
        self.counts["reference_path"] += len(slow)
        results: dict[int, Encoded | Dropped] = {}
        for i in slow:
            results[i] = self._encode_one_reference(samples[i], msgs[i], flags[i], rendered[i], max_len, overlong)
        if fast:
            texts = [rendered[i] for i in fast]
            if self.piecewise:
                token_lists = self._encode_piecewise(texts)
                token_lists = self._cross_check(texts, token_lists)
            else:
                token_lists = self._encode_whole(texts)
            for i, (ids, token_at) in zip(fast, token_lists):
                results[i] = self._labels(samples[i], msgs[i], flags[i], built[i], ids, token_at, max_len, overlong)
        return [results[i] for i in range(len(samples))]

    def _render_checked(self, samples: Sequence[dict], msgs: list[list[dict]]) -> list[str]:
        """The chat template's render of each sample; a sample the template refuses is named."""
        try:
            return self.render(msgs)
        except Exception:
            for sample, m in zip(samples, msgs):
                try:
                    self.render([m])
                except Exception as exc:
                    raise ValueError(f"sample {sample.get('id')!r}: the chat template refuses it: {exc}") from None
            raise

    def _build_text(self, messages: list[dict]) -> tuple[str, list[int], _Layout] | None:
        layout = self._layout(tuple(m["role"] for m in messages))
        if layout is None:
            return None
        parts, starts, pos = [], [], 0
        for glue, m in zip(layout.glues, messages):
            pos += len(glue)
            starts.append(pos)
            pos += len(m["content"])
            parts += (glue, m["content"])
        parts.append(layout.glues[-1])
        return "".join(parts), starts, layout

    def _split(self, text: str) -> list[str]:
        """[text, added token, text, added token, ..., text], like the tokenizer's own added-token split."""
        return self._special_re.split(text)

    def _encode_piecewise(self, texts: list[str]):
        """(ids, token_at) per text, from pieces between added tokens, each distinct piece encoded once."""
        chunks = [self._split(t) for t in texts]
        missing = sorted({c for cs in chunks for c in cs[0::2] if c and c not in self._pieces})
        if missing:
            for c, enc in zip(missing, self.backend.encode_batch(missing, add_special_tokens=False)):
                self._pieces[c] = _Piece(enc)
        return [self._join(cs) for cs in chunks]

    def _join(self, chunks: list[str]):
        arrays, char_starts, tok_starts, pieces = [], [], [], []
        ch = tok = 0
        for j, c in enumerate(chunks):
            if not c:
                continue
            char_starts.append(ch)
            tok_starts.append(tok)
            if j % 2:
                arrays.append(np.array([self.special_ids[c]], dtype=np.int32))
                pieces.append(None)
                tok += 1
            else:
                piece = self._pieces[c]
                arrays.append(piece.ids)
                pieces.append(piece)
                tok += len(piece.ids)
            ch += len(c)
        ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)

        def token_at(pos: int) -> int:
            """Index of the first token whose first character is at or after `pos`."""
            if pos >= ch:
                return tok
            p = bisect.bisect_right(char_starts, pos) - 1
            rel = pos - char_starts[p]
            if rel == 0:
                return tok_starts[p]
            if pieces[p] is None:  # inside an added token: the next token
                return tok_starts[p] + 1
            return tok_starts[p] + pieces[p].first_token_at_or_after(rel)

        return ids, token_at

    def _encode_whole(self, texts: list[str]):
        """(ids, token_at) per text, each text encoded whole (char lookups in Rust, no Python offset lists)."""
        out = []
        for text, enc in zip(texts, self.backend.encode_batch(texts, add_special_tokens=False)):
            piece = _Piece(enc)
            n_chars, n_tokens = len(text), len(piece.ids)
            out.append((piece.ids, lambda pos, p=piece, c=n_chars, n=n_tokens: n if pos >= c
                        else p.first_token_at_or_after(pos)))
        return out

    def _cross_check(self, texts: list[str], token_lists):
        """Compare piecewise ids with whole-text ids for the first `check_tokens` samples this encoder sees."""
        todo = len(texts) if self.check_tokens < 0 else min(len(texts), self.check_tokens - self.counts["checked"])
        if todo <= 0:
            return token_lists
        whole = self.backend.encode_batch_fast(texts[:todo], add_special_tokens=False)
        self.counts["checked"] += todo
        if all(np.array_equal(ids, np.asarray(w.ids, dtype=np.int32)) for (ids, _), w in zip(token_lists, whole)):
            return token_lists
        self.piecewise = False
        self.counts["piecewise_mismatch"] += 1
        return self._encode_whole(texts)

    def _labels(self, sample, messages, flags, built, ids, token_at, max_len, overlong) -> Encoded | Dropped:
        text, starts, layout = built
        spans = []
        for i, (m, trained) in enumerate(zip(messages, flags)):
            if not trained:
                continue
            closing = layout.ends.get(i)
            if closing is None:
                raise ValueError(f"sample {sample.get('id')!r}: the chat template closes assistant turns with no "
                                 f"special token, so the end of turn {i} cannot be trained")
            a = token_at(starts[i])
            b = token_at(starts[i] + len(m["content"]) + len(closing))
            spans.append((a, b))
        if self._special_re is not None and len(self._special_re.findall(text)) > layout.n_specials:
            self.counts["special_tokens_in_content"] += 1
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
        for a, b in spans:
            labels[a:b] = ids[a:b]
        return self._finish(sample, ids, labels, spans, max_len, overlong)

    def _encode_one_reference(self, sample, messages, flags, full, max_len, overlong) -> Encoded | Dropped:
        render = lambda msgs: self.render([msgs], add_generation_prompt=True)[0]  # noqa: E731
        spans = _prefix_spans(render, messages, flags, full, self.eos_token, self.specials)
        enc = self.backend.encode(full, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int32)
        starts = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
        labels, tok_spans = _labels_from_starts(ids, starts, spans)
        return self._finish(sample, ids, labels, tok_spans, max_len, overlong)

    def _finish(self, sample, ids, labels, spans, max_len, overlong) -> Encoded | Dropped:
        try:
            ids, labels, truncated = _fit(ids, labels, spans, max_len, overlong)
        except SampleDropped as exc:
            return Dropped(sample["id"], exc.reason, exc.detail)
        return Encoded(sample["id"], ids, labels, truncated)

    def clear(self) -> None:
        """Forget the encoded pieces (they are kept per shard)."""
        self._pieces.clear()


_HF_ENCODERS: dict[int, ChatEncoder] = {}


def encode_sample(tokenizer, sample: dict, max_len: int,
                  overlong: str = DEFAULT_OVERLONG) -> tuple[list[int], list[int]]:
    """Token ids and labels of one sample with a transformers tokenizer (the fast path). Raises SampleDropped."""
    encoder = _HF_ENCODERS.get(id(tokenizer))
    if encoder is None or encoder.backend is not tokenizer.backend_tokenizer:
        encoder = _HF_ENCODERS[id(tokenizer)] = ChatEncoder.from_hf(tokenizer)
    result = encoder.encode([sample], max_len, overlong)[0]
    if isinstance(result, Dropped):
        raise SampleDropped(result.reason, result.detail)
    return result.input_ids.tolist(), result.labels.tolist()

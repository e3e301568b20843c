"""Native tool-call formats per model family (issue 21, part 2): qwen25, qwen3, llama31, mistral.

Each family's own template against its documented example, byte for byte; a tokenizer whose chat template renders
`tools=` in the family's format (a small Jinja template written here from the documented format, not the vendor's
file) gives the same text in native mode; labels decoded per family are exactly the trained assistant turns, also
where the templates are not prefix-stable (Qwen3 drops earlier <think>, Mistral lists the tools before the last user
turn); reasoning in and out of the loss; parsers; config errors; and a tiny model of each architecture through the
real data -> tokenize -> one training epoch path plus evaluation prompt building. Select with -k family.
"""

import copy
import json

import pytest

from agenttune.common.atomic import read_jsonl
from agenttune.common.config import section_with_defaults
from agenttune.demo.generator import generate_traces
from agenttune.render import FAMILIES, parse
from agenttune.render.families import FamilyConfigError, FamilyText, api_messages, api_tools
from agenttune.render.samples import make_renderers, render_trace
from agenttune.tokenize.encoder import IGNORE_INDEX, ChatEncoder

TOOLS = [{"name": "get_weather", "description": "Weather now in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

# The two-step trace: the user asks, the assistant calls a tool with thought text (and reasoning), the result comes
# back, the assistant answers.
TWO_STEP = {
    "id": "two-step", "source": "unit", "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "I'll check.", "reasoning": "Need the weather.",
         "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "assistant", "content": "It is 4 C in Oslo."},
    ],
}

# Two user queries, parallel calls, an untrained answer and reasoning everywhere: Qwen3 drops the <think> of the
# turns before the second query, Mistral writes the tool list and the system text before the second query.
TWO_QUERIES = {
    "id": "two-queries", "source": "unit",
    "tools": TOOLS + [{"name": "web_search", "description": "Search the web.",
                       "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Both cities.", "reasoning": "Two calls.",
         "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                        {"name": "get_weather", "arguments": {"city": "Rome"}}]},
        {"role": "tool", "name": "get_weather", "content": "4 C"},
        {"role": "tool", "name": "get_weather", "content": "19 C"},
        {"role": "assistant", "content": "Oslo 4 C, Rome 19 C.", "reasoning": "Sum up.", "loss": False},
        {"role": "user", "content": "Any news from Rome?"},
        {"role": "assistant", "content": "", "reasoning": "Search news.",
         "tool_calls": [{"name": "web_search", "arguments": {"query": "Rome news"}}]},
        {"role": "tool", "name": "web_search", "content": "[]"},
        {"role": "assistant", "content": "Nothing new.", "reasoning": "Empty result."},
    ],
}


# Jinja chat templates for the tests, written for this test from each family's documented prompt format (not the
# vendors' template files): each renders `tools=` and OpenAI-style tool calls the way the documentation shows.

QWEN25 = r"""
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set msgs = messages[1:] %}
{%- else %}{%- set system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}{%- set msgs = messages %}{%- endif %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}
{{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for m in msgs %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if m.tool_calls %}
{%- if m.content %}{{- '\n' + m.content }}{%- endif %}
{%- for c in m.tool_calls %}{{- '\n<tool_call>\n{"name": "' + c.function.name + '", "arguments": ' + c.function.arguments | tojson + '}\n</tool_call>' }}{%- endfor %}
{%- else %}{{- '\n' + m.content }}{%- endif %}
{{- '<|im_end|>\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or msgs[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
{%- if loop.last or msgs[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- else %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

QWEN3 = r"""
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- else %}{%- set system = '' %}{%- endif %}
{%- if tools %}
{{- '<|im_start|>system\n' }}{%- if system %}{{- system + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\n' + system + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{%- if m.reasoning_content is defined and m.reasoning_content %}{%- set reasoning = m.reasoning_content %}{%- else %}{%- set reasoning = '' %}{%- endif %}
{%- if loop.index0 > ns.last and (loop.last or reasoning) %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + m.content.lstrip('\n') }}
{%- else %}{{- '<|im_start|>assistant\n' + m.content }}{%- endif %}
{%- if m.tool_calls %}{%- for c in m.tool_calls %}
{%- if (loop.first and m.content) or not loop.first %}{{- '\n' }}{%- endif %}
{{- '<tool_call>\n{"name": "' + c.function.name + '", "arguments": ' + c.function.arguments | tojson + '}\n</tool_call>' }}
{%- endfor %}{%- endif %}
{{- '<|im_end|>\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- elif m.role == 'user' %}{{- '<|im_start|>user\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

LLAMA31 = r"""
{{- '<|begin_of_text|>' }}
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content | trim %}{%- set msgs = messages[1:] %}
{%- else %}{%- set system = '' %}{%- set msgs = messages %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools %}{{- 'Environment: ipython\n' }}{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' + system + '<|eot_id|>' }}
{%- if tools %}
{{- '<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n' }}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.\n\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) + '\n\n' }}{%- endfor %}
{{- msgs[0].content | trim + '<|eot_id|>' }}
{%- set msgs = msgs[1:] %}
{%- endif %}
{%- for m in msgs %}
{%- if m.role == 'assistant' and m.tool_calls %}
{%- if m.tool_calls | length != 1 %}{{- raise_exception('one call per assistant turn') }}{%- endif %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + m.tool_calls[0].function.name + '", "parameters": ' + m.tool_calls[0].function.arguments | tojson + '}<|eot_id|>' }}
{%- elif m.role == 'tool' or m.role == 'ipython' %}{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + m.content | tojson + '<|eot_id|>' }}
{%- else %}{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"""

MISTRAL = r"""
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set msgs = messages[1:] %}
{%- else %}{%- set system = none %}{%- set msgs = messages %}{%- endif %}
{%- set ns = namespace(last=-1) %}
{%- for m in msgs %}{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}
{{- '<s>' }}
{%- for m in msgs %}
{%- if m.role == 'user' %}
{%- if tools and loop.index0 == ns.last %}{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}
{%- if system is not none and loop.index0 == ns.last %}{{- '[INST] ' + system + '\n\n' + m.content + '[/INST]' }}
{%- else %}{{- '[INST] ' + m.content + '[/INST]' }}{%- endif %}
{%- elif m.role == 'assistant' and m.tool_calls %}
{{- '[TOOL_CALLS] [' }}
{%- for c in m.tool_calls %}
{%- if c.id is not defined or c.id | length != 9 %}{{- raise_exception('call ids are 9 alphanumeric characters') }}{%- endif %}
{{- (c.function | tojson)[:-1] + ', "id": "' + c.id + '"}' }}{%- if not loop.last %}{{- ', ' }}{%- endif %}
{%- endfor %}
{{- ']</s>' }}
{%- elif m.role == 'assistant' %}{{- ' ' + m.content | trim + '</s>' }}
{%- elif m.role == 'tool' %}{{- '[TOOL_RESULTS] ' + {'content': m.content, 'call_id': m.tool_call_id} | tojson + '[/TOOL_RESULTS]' }}
{%- endif %}
{%- endfor %}
"""

# A ChatML template that ignores tools= (as SmolLM2's does).
CHATML_NO_TOOLS = r"""
{%- for m in messages %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# --- the documented examples, written out -------------------------------------------------------------------------

QWEN_TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather now in a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

DOCUMENTED = {
    # https://qwen.readthedocs.io/en/latest/framework/function_call.html (Qwen2.5: Hermes-style tool use; the
    # rendered example with the "# Tools" system block, <tool_call> blocks and <tool_response> in a user turn)
    "qwen25": (
        "<|im_start|>system\nBe brief.\n\n" + QWEN_TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        "<|im_start|>assistant\nI'll check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n4 C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 4 C in Oslo.<|im_end|>\n"),
    # The same page (Qwen3) and Qwen3's model card: the same tool block after the system text, and <think> blocks
    # for the turns after the last user query (an empty one on the final turn).
    "qwen3": (
        "<|im_start|>system\nBe brief.\n\n" + QWEN_TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed the weather.\n</think>\n\nI'll check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n4 C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 4 C in Oslo.<|im_end|>\n"),
    # https://www.llama.com/docs/model-cards-and-prompt-formats/llama3_1/#json-based-tool-calling (tools in the
    # first user message, {"name", "parameters"} calls, the ipython role for results; a result is JSON, as the model
    # card's chat template writes it: the string "4 C" in quotes)
    "llama31": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        "that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
        "Do not use variables.\n\n"
        '{\n    "type": "function",\n    "function": {\n        "name": "get_weather",\n'
        '        "description": "Weather now in a city.",\n        "parameters": {\n'
        '            "type": "object",\n            "properties": {\n                "city": {\n'
        '                    "type": "string"\n                }\n            },\n'
        '            "required": [\n                "city"\n            ]\n        }\n    }\n}\n\n'
        "Weather in Oslo?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"4 C"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4 C in Oslo.<|eot_id|>"),
    # https://docs.mistral.ai/guides/tokenization/ (v3: [AVAILABLE_TOOLS] before the last user turn, the system
    # text in that turn, [TOOL_CALLS] lists with 9-character ids, [TOOL_RESULTS] with the call id)
    "mistral": (
        '<s>[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", "description": '
        '"Weather now in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}][/AVAILABLE_TOOLS][INST] Be brief.\n\nWeather in Oslo?[/INST]'
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "{ID0}"}]</s>'
        '[TOOL_RESULTS] {"content": "4 C", "call_id": "{ID0}"}[/TOOL_RESULTS] It is 4 C in Oslo.</s>'),
}

# What each family trains on for TWO_QUERIES: exactly these strings, in order ({IDk}: the sample's call ids).
TRAINED_TWO_QUERIES = {
    "qwen25": [
        'Both cities.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
        '<tool_call>\n{"name": "web_search", "arguments": {"query": "Rome news"}}\n</tool_call><|im_end|>',
        "Nothing new.<|im_end|>"],
    "qwen3": [  # the first turn lies before the last user query: its reasoning is not in the text at all
        'Both cities.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
        '<think>\nSearch news.\n</think>\n\n'
        '<tool_call>\n{"name": "web_search", "arguments": {"query": "Rome news"}}\n</tool_call><|im_end|>',
        "<think>\nEmpty result.\n</think>\n\nNothing new.<|im_end|>"],
    "llama31": [  # one call per turn: the parallel calls are two turns; no thought text beside a call
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eot_id|>',
        '{"name": "get_weather", "parameters": {"city": "Rome"}}<|eot_id|>',
        '{"name": "web_search", "parameters": {"query": "Rome news"}}<|eot_id|>',
        "Nothing new.<|eot_id|>"],
    "mistral": [
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "{ID0}"}, '
        '{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "{ID1}"}]</s>',
        '[TOOL_CALLS] [{"name": "web_search", "arguments": {"query": "Rome news"}, "id": "{ID2}"}]</s>',
        " Nothing new.</s>"],
}

# The family's tokens the tests' tokenizers get (added to SmolLM2's), as the family's own tokenizers have them.
FAMILY_TOKENS = {
    "qwen25": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
    "qwen3": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"],
    "llama31": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                "<|python_tag|>"],
    "mistral": ["<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
}
SPECIAL = {"qwen25": False, "qwen3": False, "llama31": True, "mistral": True}  # Qwen's tool tags are plain added tokens
JINJA = {"qwen25": QWEN25, "qwen3": QWEN3, "llama31": LLAMA31, "mistral": MISTRAL}
QUIET = lambda *_: None  # noqa: E731


def with_ids(text: str, sample: dict) -> str:
    ids = [i for m in sample["messages"] for i in m.get("call_ids") or []]
    for k, i in enumerate(ids):
        text = text.replace(f"{{ID{k}}}", i)
    return text


def family_tokenizer(smol_tokenizer, family: str, template: str | None):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.add_tokens(FAMILY_TOKENS[family], special_tokens=SPECIAL[family])
    tokenizer.chat_template = template
    return tokenizer


def trained_texts(tokenizer, ids, labels) -> list[str]:
    """The label runs decoded: each contiguous run of trained tokens is one trained turn."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(int(token))
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return [tokenizer.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in runs]


def encode(tokenizer, sample):
    [result] = ChatEncoder.from_hf(tokenizer).encode([sample], max_len=4096)
    return result


# --- the project's templates against the documented examples --------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_template_renders_the_documented_example_byte_for_byte(family):
    sample = render_trace(TWO_STEP, family, "react_list")
    assert sample["tool_format"] == "family" and sample["tools"] == TOOLS and sample["reasoning_loss"] is True
    text = FamilyText(FAMILIES[family], None, {}, "builtin", QUIET).render(sample["messages"], sample["tools"])
    assert text == with_ids(DOCUMENTED[family], sample)
    # Llama 3.1 and Mistral have no place for thought text beside a call: counted on the sample, kept in content.
    assert sample.get("dropped_thought_turns", 0) == (1 if family in ("llama31", "mistral") else 0)


# --- native mode: the model's own chat template --------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_native_template_gives_the_same_text_and_exact_labels(family, smol_tokenizer):
    tokenizer = family_tokenizer(smol_tokenizer, family, JINJA[family])
    for trace in (TWO_STEP, TWO_QUERIES):
        renderers = make_renderers(tokenizer, "auto", QUIET)
        sample = render_trace(trace, family, "json_schema", renderers)
        assert sample["render_mode"] == "native"
        native = tokenizer.apply_chat_template(api_messages(sample["messages"]), tools=api_tools(sample["tools"]),
                                               tokenize=False)
        project = FamilyText(FAMILIES[family], None, {}, "builtin", QUIET).render(sample["messages"], sample["tools"])
        assert native == project
    # The labels of the sample whose template is not prefix-stable, decoded: exactly the trained turns.
    encoder = ChatEncoder.from_hf(tokenizer, log=QUIET)
    [result] = encoder.encode([sample], max_len=4096)
    expected = [with_ids(t, sample) for t in TRAINED_TWO_QUERIES[family]]
    assert trained_texts(tokenizer, result.input_ids, result.labels) == expected
    assert encoder.counts[f"family:{family}:native"] == 1
    assert tokenizer.decode(result.input_ids, skip_special_tokens=False) == native


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_project_mode_on_a_template_without_tools_gives_exact_labels(family, smol_tokenizer):
    """A chat template that ignores tools= (SmolLM2's, or a ChatML one on a tokenizer with the family's tokens): the
    project's template renders the text; the labels are exactly the trained turns."""
    tokenizer = family_tokenizer(smol_tokenizer, family, CHATML_NO_TOOLS)
    logs = []
    sample = render_trace(TWO_QUERIES, family, "json_schema", make_renderers(tokenizer, "auto", logs.append))
    assert sample["render_mode"] == "project" and any("ignores tools=" in line for line in logs)
    encoder = ChatEncoder.from_hf(tokenizer, log=QUIET)
    [result] = encoder.encode([sample], max_len=4096)
    expected = [with_ids(t, sample) for t in TRAINED_TWO_QUERIES[family]]
    assert trained_texts(tokenizer, result.input_ids, result.labels) == expected
    assert encoder.counts[f"family:{family}:project"] == 1
    # SmolLM2 itself (the default model) lacks the family's tokens: they are plain text, and BPE may merge a turn's
    # first or last characters with its neighbours ("][" in "[/INST][TOOL_CALLS]", "|><" in
    # "<|eot_id|><|start_header_id|>"); a token is trained when it starts inside the turn, so a run may miss or add
    # a character or two at its edges. The encoder says so in its log.
    logs = []
    sample = render_trace(TWO_QUERIES, family, "json_schema", make_renderers(smol_tokenizer, "auto", QUIET))
    [result] = ChatEncoder.from_hf(smol_tokenizer, log=logs.append).encode([sample], max_len=4096)
    runs = trained_texts(smol_tokenizer, result.input_ids, result.labels)
    assert len(runs) == len(expected)
    # SmolLM2 is a ChatML model: Qwen's <|im_end|> is one of its tokens, Llama's and Mistral's are not.
    assert any("written as text" in line for line in logs) == (family in ("llama31", "mistral"))
    for run, turn in zip(runs, expected):
        assert turn[2:-2] in run and abs(len(run) - len(turn)) <= 4, (run, turn)


@pytest.mark.parametrize("native", [True, False])
def test_family_reasoning_in_and_out_of_the_loss(native, smol_tokenizer):
    tokenizer = family_tokenizer(smol_tokenizer, "qwen3", JINJA["qwen3"] if native else None)
    if not native:
        tokenizer.chat_template = smol_tokenizer.chat_template
    out_of_loss = render_trace(TWO_QUERIES, "qwen3", "json_schema", make_renderers(tokenizer, "auto", QUIET, False))
    assert out_of_loss["reasoning_loss"] is False
    result = encode(tokenizer, out_of_loss)
    assert trained_texts(tokenizer, result.input_ids, result.labels) == [
        TRAINED_TWO_QUERIES["qwen3"][0],
        '<tool_call>\n{"name": "web_search", "arguments": {"query": "Rome news"}}\n</tool_call><|im_end|>',
        "Nothing new.<|im_end|>"]
    in_loss = render_trace(TWO_QUERIES, "qwen3", "json_schema", make_renderers(tokenizer, "auto", QUIET, True))
    result = encode(tokenizer, in_loss)
    assert trained_texts(tokenizer, result.input_ids, result.labels) == TRAINED_TWO_QUERIES["qwen3"]


def test_family_spans_are_located_when_the_native_text_differs_from_the_projects(smol_tokenizer):
    """A Qwen2.5-style template with another default system text and an extra line: the native text is not the
    project's, and the spans are still found in it (by the marker renders, not by the project's layout)."""
    template = QWEN25.replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "Hi.")
    template = template.replace("{{- '<|im_end|>\\n' }}\n{%- for m in msgs %}",
                                "{{- '<|im_end|>\\n<|im_start|>user\\nContext line.<|im_end|>\\n' }}\n"
                                "{%- for m in msgs %}")
    tokenizer = family_tokenizer(smol_tokenizer, "qwen25", template)
    trace = {**TWO_QUERIES, "messages": TWO_QUERIES["messages"][1:]}  # no own system text: the default shows
    sample = render_trace(trace, "qwen25", "json_schema", make_renderers(tokenizer, "auto", QUIET))
    text = FamilyText.from_tokenizer(FAMILIES["qwen25"], tokenizer, "auto", QUIET).render(
        sample["messages"], sample["tools"])
    assert "Hi.\n\n# Tools" in text and "Context line." in text
    assert text != FAMILIES["qwen25"].render_text(sample["messages"], sample["tools"])
    result = encode(tokenizer, sample)
    assert trained_texts(tokenizer, result.input_ids, result.labels) == TRAINED_TWO_QUERIES["qwen25"]


# --- parsers ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_parsers_read_back_every_rendered_step(family):
    for trace in [TWO_STEP, TWO_QUERIES] + generate_traces(40, seed=3):
        sample = render_trace(trace, family, "json_schema")
        for m in sample["messages"]:
            if m["role"] != "assistant":
                continue
            parsed = parse(family, FAMILIES[family].model_text(m))
            if m["tool_calls"]:
                assert parsed.status == "call"
                assert [(c.name, c.arguments) for c in parsed.calls] == [
                    (c["name"], c["arguments"]) for c in m["tool_calls"]]
            else:
                assert parsed.status == "answer" and parsed.final_answer == m["content"].strip()


def test_family_parallel_calls_one_turn_or_one_per_turn():
    turns = {f: [len(m["tool_calls"]) for m in render_trace(TWO_QUERIES, f, "json_schema")["messages"]
                 if m["role"] == "assistant"] for f in FAMILIES}
    assert turns == {"qwen25": [2, 0, 1, 0], "qwen3": [2, 0, 1, 0], "mistral": [2, 0, 1, 0],
                     "llama31": [1, 1, 0, 1, 0]}  # Llama 3.1: one call per assistant turn
    qwen = parse("qwen25", TRAINED_TWO_QUERIES["qwen25"][0].removesuffix("<|im_end|>"))
    assert [c.arguments["city"] for c in qwen.calls] == ["Oslo", "Rome"]
    mistral = parse("mistral", '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}, "id": "abcDEF123"}, '
                               '{"name": "b", "arguments": {}, "id": "abcDEF124"}]')
    assert [(c.name, c.arguments) for c in mistral.calls] == [("a", {"x": 1}), ("b", {})]
    # Decoding with skip_special_tokens drops [TOOL_CALLS]: the bare list is still the call.
    assert parse("mistral", '[{"name": "a", "arguments": {"x": 1}}]').calls == mistral.calls[:1]
    assert parse("llama31", '<|python_tag|>{"name": "a", "parameters": {"x": 1}}').calls == mistral.calls[:1]


@pytest.mark.parametrize("family, text", [
    ("qwen25", '<tool_call>\n{"name": "a", "arguments": {"x": 1}\n</tool_call>'),
    ("qwen3", '<think>\nhm\n</think>\n\n<tool_call>\n{"name": "a"'),
    ("llama31", '{"name": "a", "parameters": {"x": 1}'),
    ("llama31", '{"name": "a", "parameters": 3}'),
    ("mistral", '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}'),
    ("mistral", "[TOOL_CALLS] []"),
    ("mistral", '[TOOL_CALLS] [{"arguments": {}}]'),
    ("mistral", 'Sure: {"name": "a", "arguments": {"x": 1}}'),  # a call outside the format is not an answer
])
def test_family_malformed_outputs(family, text):
    assert parse(family, text).status == "malformed"


@pytest.mark.parametrize("family, text, answer", [
    ("llama31", '{"city": "Oslo", "temp": 4}', '{"city": "Oslo", "temp": 4}'),  # JSON data, not a call
    ("mistral", '[{"city": "Oslo"}]', '[{"city": "Oslo"}]'),
    ("qwen3", "<think>\nx\n</think>\n\nIt is 4 C.", "It is 4 C."),
])
def test_family_answers_that_look_like_json_stay_answers(family, text, answer):
    assert parse(family, text).final_answer == answer


def test_family_mistral_call_ids_are_nine_alphanumerics_and_deterministic():
    def call_ids(trace):
        return [i for m in render_trace(trace, "mistral", "json_schema")["messages"] for i in m.get("call_ids") or []]

    ids, again, others = call_ids(TWO_QUERIES), call_ids(TWO_QUERIES), call_ids({**TWO_QUERIES, "id": "another-trace"})
    assert ids == again and len(set(ids)) == 3 and not set(ids) & set(others)
    assert all(len(i) == 9 and i.isascii() and i.isalnum() for i in ids + others)
    results = [m["tool_call_id"] for m in render_trace(TWO_QUERIES, "mistral", "json_schema")["messages"]
               if m["role"] == "tool"]
    assert results == ids  # each result answers its call by id


def test_family_mistral_calls_without_their_ids_are_an_error_not_dropped():
    from agenttune.render import mistral

    calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]
    assert mistral.calls_text(calls, ["AbCdE1234", "FgHiJ5678"]).count('"name"') == 2
    for ids in ([], ["AbCdE1234"]):
        with pytest.raises(ValueError, match="call id"):
            mistral.calls_text(calls, ids)
    with pytest.raises(ValueError, match="call id"):
        mistral.render_text([{"role": "user", "content": "Weather?", "loss": False},
                             {"role": "assistant", "content": "", "loss": True, "tool_calls": calls}], None)


# --- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_without_a_chat_template_is_a_config_error(family, smol_tokenizer):
    tokenizer = family_tokenizer(smol_tokenizer, family, None)
    with pytest.raises(FamilyConfigError, match=f"format.templates.{family}: the tokenizer has no chat template"):
        render_trace(TWO_STEP, family, "json_schema", make_renderers(tokenizer, "auto", QUIET))
    sample = render_trace(TWO_STEP, family, "json_schema")  # no tokenizer at the data stage: tokenize decides
    with pytest.raises(FamilyConfigError, match=f"format.templates.{family}"):
        encode(tokenizer, sample)
    # format.chat_template_tools: builtin forces the project's own template
    forced = render_trace(TWO_STEP, family, "json_schema", make_renderers(tokenizer, "builtin", QUIET))
    assert forced["render_mode"] == "project" and encode(tokenizer, forced).labels is not None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_with_another_familys_native_format_is_a_config_error(family, smol_tokenizer):
    other = {"qwen25": "llama31", "qwen3": "qwen25", "llama31": "mistral", "mistral": "qwen3"}[family]
    tokenizer = family_tokenizer(smol_tokenizer, other, JINJA[other])
    with pytest.raises(FamilyConfigError, match=f"format.templates.{family}: .*another format .*looks like {other}"):
        render_trace(TWO_STEP, family, "json_schema", make_renderers(tokenizer, "auto", QUIET))
    with pytest.raises(FamilyConfigError, match=f"format.templates.{family}"):
        encode(tokenizer, render_trace(TWO_STEP, family, "json_schema"))
    forced = render_trace(TWO_STEP, family, "json_schema", make_renderers(tokenizer, "builtin", QUIET))
    result = encode(tokenizer, forced)
    decoded = tokenizer.decode(result.input_ids, skip_special_tokens=False)
    assert decoded == with_ids(DOCUMENTED[family], forced)


def test_family_samples_made_for_a_native_template_refuse_another_tokenizer(smol_tokenizer):
    tokenizer = family_tokenizer(smol_tokenizer, "qwen25", JINJA["qwen25"])
    sample = render_trace(TWO_STEP, "qwen25", "json_schema", make_renderers(tokenizer, "auto", QUIET))
    with pytest.raises(ValueError, match="format.templates.qwen25: the samples were rendered for the model's own"):
        encode(smol_tokenizer, sample)


# --- a tiny model of each architecture through the real path ----------------------------------------------------------

ARCHITECTURE = {"qwen25": "Qwen2Config", "qwen3": "Qwen2Config", "llama31": "LlamaConfig", "mistral": "MistralConfig"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_tiny_model_runs_data_tokenize_train_and_evaluation_prompts(family, smol_tokenizer, tmp_path):
    import glob

    import pyarrow.parquet as pq
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agenttune.common.config import section_with_defaults
    from agenttune.data.format import format_samples
    from agenttune.evaluate.items import build_items
    from agenttune.evaluate.predict import prompts_and_stops
    from agenttune.tokenize.split import tokenize_split
    from agenttune.train.trainer import train_epoch
    from training_data import CFG

    tokenizer = family_tokenizer(smol_tokenizer, family, JINJA[family])
    config = getattr(transformers, ARCHITECTURE[family])(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    # data: the family template chosen in format.templates, the tokenizer read back from the model folder
    traces = tmp_path / "traces.jsonl"
    rows = generate_traces(30, seed=7) + [TWO_STEP, TWO_QUERIES]
    traces.write_text("".join(json.dumps(t) + "\n" for t in rows), encoding="utf-8")
    cfg = {"split": {"val": 0.1, "test": 0.25},
           "format": {"templates": {family: 1}, "tool_formats": {"json_schema": 1}, "mix": {"eta": 1.0}}}
    logs = []
    format_samples([traces], tmp_path / "samples", cfg, seed=1, tokenizer=AutoTokenizer.from_pretrained(model_dir),
                   log=logs.append)
    train = [json.loads(x) for x in (tmp_path / "samples" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert train and {s["template"] for s in train} == {family}
    assert all(s["render_mode"] == "native" and s["tools"] for s in train if s["kind"] == "tool")
    assert any(f"{family}: native mode" in line for line in logs)

    # tokenize: every sample kept, each with trained tokens, the text what the model's template renders
    tcfg = section_with_defaults({"max_len": 2048, "samples_per_shard": 64}, "tokenize")
    manifest = tokenize_split(tmp_path / "samples" / "train.jsonl", model_dir, tmp_path / "shards", tcfg)
    shards = sorted(glob.glob(str(tmp_path / "shards" / "train-*.parquet")))
    table = pq.read_table(shards[0]).to_pylist()
    assert len(table) == len(train) == manifest["splits"]["train"]["samples_kept"]
    assert manifest["splits"]["train"]["dropped"] == 0
    first = next(r for r in table if r["id"] == train[0]["id"])
    text = tokenizer.apply_chat_template(api_messages(train[0]["messages"]), tools=api_tools(train[0]["tools"]),
                                         tokenize=False)
    assert tokenizer.decode(first["input_ids"], skip_special_tokens=False) == text
    assert all(r["n_trained"] > 0 for r in table)

    # one training step (an epoch of two samples, batch 1, accumulation 2) on shards of the first two samples
    two = tmp_path / "two.jsonl"
    two.write_text("".join((tmp_path / "samples" / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:2]),
                   encoding="utf-8")
    tokenize_split(two, model_dir, tmp_path / "two-shards", tcfg)
    out = train_epoch(model_dir, sorted(glob.glob(str(tmp_path / "two-shards" / "train-*.parquet"))), None,
                      tmp_path / "epoch-1", 1, {**CFG, "epochs": 1}, seed=3,
                      compute={"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11}, log=QUIET)
    assert out["global_step"] == 1 and (tmp_path / "epoch-1" / "model.safetensors").exists()

    # evaluation: held-out items rendered through the same path, with the template's stops
    items, _ = build_items("heldout", {}, seed=1, samples_path=tmp_path / "samples" / "test.jsonl", log=QUIET)
    assert items and all(it["template"] == family for it in items)
    prompts, stops = prompts_and_stops(AutoTokenizer.from_pretrained(model_dir), items, QUIET)
    for it, prompt, stop in zip(items, prompts, stops):
        assert prompt == tokenizer.apply_chat_template(api_messages(it["prompt_messages"]),
                                                       tools=api_tools(it["tools"]), add_generation_prompt=True,
                                                       tokenize=False)
        assert stop == FAMILIES[family].STOP


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_served_prompt_is_the_models_own_render(family, smol_tokenizer):
    """The OpenAI-compatible server (agenttune.evaluate.serve) builds a family's prompt through the same path."""
    from agenttune.evaluate.serve import Backend

    tokenizer = family_tokenizer(smol_tokenizer, family, JINJA[family])
    backend = Backend.__new__(Backend)  # the prompt side only: no model is loaded
    backend.tokenizer, backend.template, backend.tool_format, backend.log = tokenizer, family, "json_schema", QUIET
    backend.renderers, backend.family_text = make_renderers(tokenizer, log=QUIET), None
    backend.chat_template_tools = "auto"
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}],
            "tools": api_tools(TOOLS)}
    prompt, stops, parsed = backend.prompt(body)
    assert prompt == tokenizer.apply_chat_template(body["messages"], tools=body["tools"], add_generation_prompt=True,
                                                   tokenize=False)
    assert stops == FAMILIES[family].STOP and parsed and backend.family_text.mode == "native"


# Two user queries answered without a call: a no-tool negative whose first answer is trained before the last query.
NO_TOOL_TWO_QUERIES = {
    "id": "no-tool-two-queries", "source": "unit", "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
}


def serving_context_errors(family: str, tokenizer, sample: dict, result) -> list[str]:
    """Each trained turn of an encoded sample against what it is served with: the text before its labels must be
    the evaluation prompt for that step (agenttune.evaluate.predict.prompts_and_stops) and its labels what the model
    writes there (Qwen3: with its <think> block). The problems found, as text."""
    from agenttune.evaluate.predict import prompts_and_stops

    module, messages = FAMILIES[family], sample["messages"]
    trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m["loss"]]
    items = [{"template": family, "render_mode": sample["render_mode"], "prompt_messages": messages[:i],
              "tools": sample["tools"]} for i in trained]
    prompts, _ = prompts_and_stops(tokenizer, items, QUIET)
    starts = [k for k, label in enumerate(result.labels)
              if label != IGNORE_INDEX and (k == 0 or result.labels[k - 1] == IGNORE_INDEX)]
    runs = trained_texts(tokenizer, result.input_ids, result.labels)
    if len(starts) != len(trained):
        return [f"{sample['id']}: {len(starts)} label runs for {len(trained)} trained turns"]
    errors = []
    for i, start, run, prompt in zip(trained, starts, runs, prompts):
        context = tokenizer.decode(result.input_ids[:start], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        if context != prompt:
            errors.append(f"{sample['id']} turn {i}: trained after a context that is not its serving prompt")
        if run != module.model_text(messages[i]) + module.TURN_END[0]:
            errors.append(f"{sample['id']} turn {i}: trained text {run!r} is not what the model writes when served")
    return errors


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_family_samples_cut_at_user_turns_train_each_turn_in_its_serving_context(family, smol_tokenizer, tmp_path):
    """Mistral writes the tool list and system text before the last user turn, Qwen3 drops the <think> of turns before
    it: the data stage cuts their train/val samples into one per user turn with trained answers, so that through
    format_samples -> tokenize every trained turn follows exactly its evaluation prompt and is what the model writes
    there. The uncut render does not (the check below fails on it), and templates without the attribute are not cut."""
    from agenttune.data.format import format_samples
    from agenttune.evaluate.items import items_from_sample

    module = FAMILIES[family]
    assert module.SPLIT_AT_USER_TURNS and not any(getattr(FAMILIES[f], "SPLIT_AT_USER_TURNS", False)
                                                  for f in ("qwen25", "llama31"))
    tokenizer = family_tokenizer(smol_tokenizer, family, JINJA[family])
    encoder = ChatEncoder.from_hf(tokenizer, log=QUIET)

    # The uncut render: the first query's trained call is out of its serving context.
    whole = render_trace(TWO_QUERIES, family, "json_schema", make_renderers(tokenizer, "auto", QUIET))
    [result] = encoder.encode([whole], max_len=4096)
    assert serving_context_errors(family, tokenizer, whole, result)

    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps(TWO_QUERIES) + "\n" + json.dumps(NO_TOOL_TWO_QUERIES) + "\n" + json.dumps(TWO_STEP)
                      + "\n", encoding="utf-8")
    cfg = {"split": {"val": 0.0, "test": 1e-9},
           "format": {"templates": {family: 1}, "tool_formats": {"json_schema": 1}, "mix": {"eta": 1.0},
                      "negatives": {"ratio": None}}}
    stats = format_samples([traces], tmp_path / "samples", cfg, seed=1, tokenizer=tokenizer, log=QUIET)
    train = read_jsonl(tmp_path / "samples" / "train.jsonl")
    assert [s["id"] for s in train] == [
        f"two-queries#{family}/user0", f"two-queries#{family}/user1", f"no-tool-two-queries#{family}/user0",
        f"no-tool-two-queries#{family}/user1", f"two-step#{family}"]  # one user turn: kept as it is
    assert [s.get("user_turn") for s in train] == [0, 1, 0, 1, None]
    # The pieces: through the answers of their user turn; earlier answers are context (loss false).
    assert [len(s["messages"]) for s in train[:4]] == [6, 10, 3, 5]
    assert [m["loss"] for m in train[1]["messages"] if m["role"] == "assistant"] == [False, False, True, True]
    assert stats["split_at_user_turns"]["train"] == {"samples_cut": 2, "samples_written": 4, "extra_negatives": 1,
                                                    "extra_irrelevant": 0}
    assert stats["splits"]["train"]["kind:tool"] == 3 and stats["ratio"]["train"]["positives"] == 3
    assert stats["splits"]["train"]["kind:no_tool"] == 2 and stats["ratio"]["train"]["negatives"] == 1

    checked = 0
    for sample, result in zip(train, encoder.encode(train, max_len=4096)):
        assert serving_context_errors(family, tokenizer, sample, result) == []
        checked += sum(1 for m in sample["messages"] if m["role"] == "assistant" and m["loss"])
    assert checked == 7  # 1 + 2 (two-queries), 1 + 1 (no-tool), 2 (two-step)
    # Items of a piece are its own steps only (the earlier ones are items of the piece before it).
    assert [it["id"] for s in train[:4] for it in items_from_sample(s, "val", "val")] == [
        f"two-queries#{family}/user0@2", f"two-queries#{family}/user1@7", f"no-tool-two-queries#{family}/user0@2"]


def test_family_server_serves_in_the_models_chat_template_tools_setting(smol_tokenizer, monkeypatch):
    """A model trained with format.chat_template_tools: builtin is served with the project's template
    (--chat-template-tools builtin), one trained with auto with its chat template's; the default is the schema's."""
    from agenttune.evaluate import serve
    from agenttune.render.samples import make_renderers

    # A Qwen2.5-style chat template whose render differs from the project's (another default system text, an extra
    # turn): which one served the prompt shows in the text.
    template = QWEN25.replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "Hi.")
    template = template.replace("{{- '<|im_end|>\\n' }}\n{%- for m in msgs %}",
                                "{{- '<|im_end|>\\n<|im_start|>user\\nContext line.<|im_end|>\\n' }}\n"
                                "{%- for m in msgs %}")
    tokenizer = family_tokenizer(smol_tokenizer, "qwen25", template)
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": api_tools(TOOLS)}
    prompts = {}
    for setting in ("auto", "builtin"):
        backend = serve.Backend.__new__(serve.Backend)  # the prompt side only: no model is loaded
        backend.tokenizer, backend.template, backend.tool_format = tokenizer, "qwen25", "json_schema"
        backend.log = QUIET
        backend.chat_template_tools = serve.chat_template_tools_setting(setting)
        backend.renderers, backend.family_text = make_renderers(tokenizer, backend.chat_template_tools, QUIET), None
        prompts[setting], _, _ = backend.prompt(body)
        assert backend.family_text.mode == ("native" if setting == "auto" else "project")
    assert "Context line." in prompts["auto"] and "Context line." not in prompts["builtin"]
    assert prompts["builtin"].startswith("<|im_start|>system\nYou are Qwen")  # the project's documented default
    assert serve.chat_template_tools_setting(None) == section_with_defaults({}, "format")["chat_template_tools"]
    with pytest.raises(ValueError, match="--chat-template-tools 'native'"):
        serve.chat_template_tools_setting("native")

    # The command line hands the setting to the backend (the schema's default when not given).
    seen = []

    class Stop(Exception):
        pass

    def backend(*args):
        seen.append(args[-1])
        raise Stop

    monkeypatch.setattr(serve, "Backend", backend)
    for argv, expected in ((["m", "--template", "qwen25", "--chat-template-tools", "builtin"], "builtin"),
                           (["m", "--template", "qwen25"], None)):
        with pytest.raises(Stop):
            serve.main(argv)
        assert seen[-1] == expected
    with pytest.raises(SystemExit):
        serve.main(["m", "--chat-template-tools", "native"])


def test_family_templates_give_the_format_and_item_rules_the_model_folder(tmp_path):
    """One list (agenttune.render.TOKENIZER_TEMPLATES) says which templates read the model's tokenizer: the data
    stage and the rules building val/BFCL items both get the model folder for a family template, not only for
    tool_call (a Snakemake dry run of the tiny config with qwen3 instead of tool_call)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from agenttune.render import TOKENIZER_TEMPLATES, needs_tokenizer

    assert set(TOKENIZER_TEMPLATES) == {"tool_call", *FAMILIES}
    assert needs_tokenizer({"react": 1, "qwen3": 0.5}) and needs_tokenizer({"tool_call": 1})
    assert not needs_tokenizer({"react": 1, "mistral": 0, "tool_call": 0})

    repo = Path(__file__).resolve().parents[1]
    tiny = yaml.safe_load((repo / "config" / "test" / "config.yaml").read_text(encoding="utf-8"))
    # No tool_call: a changed copy of the tiny config, not an overlay (Snakemake merges config files key by key).
    tiny["format"]["templates"] = {"react": 0.8, "qwen3": 0.2}
    tiny.setdefault("evaluate", {})["val"] = {}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    run = "pytest-family-items"
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", f"results/{run}/eval/items/val.jsonl", "--configfile", str(config),
                           "--config", f"run={run}"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for rule in ("format_samples", "eval_items"):
        block = re.search(rf"rule {rule}:\n\s*input: (.*)\n", out)
        assert block, (rule, out[-3000:])
        inputs = block.group(1).split(", ")
        assert "results/models/tiny-llama" in inputs, (rule, inputs)


def test_family_data_stage_refuses_a_tokenizer_without_a_chat_template_before_writing(smol_tokenizer, tmp_path):
    from agenttune.data.format import format_samples

    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in generate_traces(12, seed=2)), encoding="utf-8")
    cfg = {"split": {"val": 0.1, "test": 0.25},
           "format": {"templates": {"llama31": 1}, "tool_formats": {"json_schema": 1}, "mix": {"eta": 1.0}}}
    with pytest.raises(FamilyConfigError, match="format.templates.llama31: the tokenizer has no chat template"):
        format_samples([traces], tmp_path / "samples", cfg, seed=1,
                       tokenizer=family_tokenizer(smol_tokenizer, "llama31", None), log=QUIET)
    assert not list((tmp_path / "samples").glob("*.jsonl"))


# --- real data -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_family_traces(tmp_path_factory):
    from conftest import shared_data

    from agenttune.traces.ingest import SourceSpec, ingest

    out = tmp_path_factory.mktemp("real-family")
    sources = [
        SourceSpec("glaive", str(shared_data("glaive_toolcall", "glaive_toolcall_en_demo.json")), "sharegpt_tools",
                   limit=150),
        SourceSpec("toolbench", str(shared_data("toolbench_example", "answer")), "openai_messages", limit=60),
        SourceSpec("parallel", str(shared_data("bfcl_v3", "BFCL_v3_parallel_multiple.json")), "bfcl", limit=40),
    ]
    ingest(sources, out / "t.jsonl", out / "q.jsonl", out / "s.json")
    return [json.loads(line) for line in (out / "t.jsonl").read_text(encoding="utf-8").splitlines()]


def expected_turn(family: str, messages: list[dict], i: int) -> str:
    """What a trained turn's labels hold: the turn as the model writes it through its end-of-turn token (Qwen3:
    without reasoning before the last user query)."""
    module, m = FAMILIES[family], messages[i]
    if family == "qwen3":
        last_query = max(k for k, x in enumerate(messages) if x["role"] == "user")
        if i < last_query or not (i == len(messages) - 1 or m.get("reasoning")):
            return FAMILIES["qwen25"].model_text(m) + "<|im_end|>"
    return module.model_text(m) + module.TURN_END[0]


@pytest.mark.parametrize("mode", ["native", "project"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_labels_on_real_traces_are_exactly_the_trained_turns(family, mode, real_family_traces, smol_tokenizer):
    """glaive, ToolBench (long thought text) and BFCL parallel calls, in native and project mode: every sample's
    label runs, decoded, are exactly its trained turns."""
    tokenizer = family_tokenizer(smol_tokenizer, family, JINJA[family] if mode == "native" else CHATML_NO_TOOLS)
    renderers = make_renderers(tokenizer, "auto", QUIET)
    samples = [render_trace(t, family, "json_schema", renderers) for t in real_family_traces]
    encoder = ChatEncoder.from_hf(tokenizer, log=QUIET)
    checked = 0
    for sample, result in zip(samples, encoder.encode(samples, max_len=100_000)):
        messages = sample["messages"]
        expected = [expected_turn(family, messages, i) for i, m in enumerate(messages)
                    if m["role"] == "assistant" and m["loss"]]
        # Two trained turns can touch (an answer, then a call, in ToolBench): their runs are then one; the labels
        # joined must be exactly the turns joined.
        assert "".join(trained_texts(tokenizer, result.input_ids, result.labels)) == "".join(expected), sample["id"]
        checked += len(expected)
    assert checked > 300 and encoder.counts[f"family:{family}:{mode}"] == len(samples)

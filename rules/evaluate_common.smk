# Names and input functions of the evaluation and report rules (rules/evaluate.smk, rules/report.smk).

EVAL = config["evaluate"]
# Benchmarks besides the held-out test split, in a fixed order; each is on when its config section is present.
EXTRA_BENCHMARKS = [b for b in ("val", "bfcl") if EVAL.get(b) is not None]
BFCL_CATEGORIES = EVAL["bfcl"]["categories"] if "bfcl" in EVAL else []
HUMAN = EVAL["human"]
HUMAN_MODELS = sorted({EVAL_MODELS[-1] if m == "last" else m for m in HUMAN["models"]})
if not set(HUMAN_MODELS) <= set(EVAL_MODELS):
    raise ValueError(
        f"evaluate.human.models: {sorted(set(HUMAN_MODELS) - set(EVAL_MODELS))} not among the evaluated models {EVAL_MODELS}"
    )
HUMAN_MODELS.sort(key=EVAL_MODELS.index)
# What changes the predictions (a changed value re-runs them): not batch_size, nor the server's concurrency and
# timeouts (see rule predict); the server's command does (another server, another dtype).
GENERATION = {
    k: EVAL[k] for k in ("max_new_tokens", "precision", "engine", "attn_implementation")
} | {"server_command": EVAL["server"]["command"]}
GENERAL = EVAL["general"]
# The server engine's jobs run in the vLLM env (vLLM pins its own torch); the project is installed there too.
PREDICT_ENV = (
    "../envs/serve-vllm.yaml" if EVAL["engine"] == "server" else "../envs/eval.yaml"
)


def general_items_inputs(wildcards):
    inputs = {
        "val": f"{OUT}/samples/val.jsonl",
        "test": f"{OUT}/samples/test.jsonl",
        "traces": f"{OUT}/traces/traces.jsonl",
    }
    if GENERAL.get("source") == "alpaca":
        inputs["alpaca"] = GENERAL["path"]
        inputs["train"] = f"{OUT}/samples/train.jsonl"
    return inputs


def eval_items_inputs(wildcards):
    inputs = {"train": f"{OUT}/samples/train.jsonl"}
    bench = wildcards.benchmark
    if bench == "heldout":
        inputs["samples"] = f"{OUT}/samples/test.jsonl"
    elif bench == "val":
        inputs["samples"] = f"{OUT}/samples/val.jsonl"
        if EVAL["val"].get("candidates"):
            inputs["candidates"] = EVAL["val"]["candidates"]
    else:
        root = EVAL["bfcl"]["path"]
        inputs["bfcl"] = [f"{root}/BFCL_v3_{c}.json" for c in BFCL_CATEGORIES] + [
            f"{root}/possible_answer/BFCL_v3_{c}.json"
            for c in BFCL_CATEGORIES
            if c != "irrelevance"
        ]
    # Rendering new items (val candidates, BFCL) in tool_call or a family template reads the model's chat template,
    # as the data stage does (agenttune.render.needs_tokenizer).
    if bench != "heldout" and needs_tokenizer(config["format"]["templates"]):
        inputs["model"] = MODEL_DIR
    return inputs


def eval_items_config(wildcards):
    bench = wildcards.benchmark
    keep = ("max_items", "decontaminate_ngram") if bench == "heldout" else (bench,)
    return {k: EVAL[k] for k in keep if k in EVAL}


def report_inputs(wildcards):
    inputs = {
        "scores": expand(f"{OUT}/eval/{{model}}/scores.json", model=EVAL_MODELS),
        "predictions": expand(
            f"{OUT}/eval/{{model}}/predictions.jsonl", model=EVAL_MODELS
        ),
        "manifests": expand(f"{OUT}/eval/{{model}}/predict.json", model=EVAL_MODELS),
        "heldout_items": f"{OUT}/eval/items/heldout.jsonl",
        "items_stats": expand(
            f"{OUT}/eval/items/{{benchmark}}.json",
            benchmark=["heldout"] + EXTRA_BENCHMARKS,
        ),
        "bench_manifests": expand(
            f"{OUT}/eval/{{model}}/{{bench}}/predict.json",
            model=EVAL_MODELS,
            bench=EXTRA_BENCHMARKS,
        ),
        "general": expand(f"{OUT}/eval/{{model}}/general.json", model=EVAL_MODELS),
        "general_items": f"{OUT}/eval/general/items.json",
        "metrics": expand(f"{OUT}/checkpoints/epoch-{{epoch}}", epoch=EPOCHS),
        "data_stats": f"{OUT}/samples/stats.json",
        "shards": f"{OUT}/shards/manifest.json",
        "human_sheet": f"{OUT}/human/sheet.json",
        "cost": f"{OUT}/cost/preflight.json",
        "code": library_code("scripts/report.py"),
    }
    if HUMAN.get("sheets"):
        inputs["human"] = f"{OUT}/human/summary.json"
    return inputs

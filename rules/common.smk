# Shared names and small input functions. Every path of a run lives under results/<run>/.
import json
from pathlib import Path

from agenttune.common.deps import module_files
from agenttune.render import needs_tokenizer

RUN = config["run"]
OUT = f"results/{RUN}"
MODEL_DIR = f"results/models/{config['model']['name']}"
EPOCHS = list(range(1, config["train"]["epochs"] + 1))
EVAL_MODELS = ["base"] + [f"epoch-{e}" for e in EPOCHS]
SPLITS = ["train", "val", "test"]


def library_code(script):
    """The package modules a rule's script imports, as inputs: an edited module re-runs the rules that run it
    (Snakemake's `code` trigger sees the script only; agenttune.common.deps)."""
    return module_files(script, root=workflow.basedir)


wildcard_constraints:
    epoch=r"\d+",
    shard=r"\d+",
    split="train|val|test",
    model=r"base|epoch-\d+",


# Data stage (rules/data.smk): the sources the ingest rule reads, and what format_samples needs.
def ingest_sources():
    """The demo traces (when enabled) and then data.sources, as {name, path, format, limit, role}."""
    sources = []
    if "demo" in config["data"] and config["data"]["demo"]["n_traces"] > 0:
        sources.append(
            {
                "name": "demo",
                "path": f"{OUT}/traces/demo.jsonl",
                "format": "canonical",
                "limit": None,
                "role": "traces",
            }
        )
    for source in config["data"]["sources"]:
        sources.append(
            {
                "name": source["name"],
                "path": source["path"],
                "format": source["format"],
                "limit": source["limit"],
                "role": source["role"],
            }
        )
    return sources


def ingest_inputs(wildcards):
    # A Hugging Face dataset is named, not a local file: nothing for Snakemake to track.
    return [s["path"] for s in ingest_sources() if s["format"] != "hf_dataset"]


def format_inputs(wildcards):
    inputs = {
        "traces": f"{OUT}/traces/traces.jsonl",
        "ingest_stats": f"{OUT}/traces/ingest_stats.json",
    }
    # tool_call and the family templates read the model's chat template (agenttune.render.TOKENIZER_TEMPLATES).
    if needs_tokenizer(config["format"]["templates"]):
        inputs["model"] = MODEL_DIR
    return inputs


def previous_epoch(wildcards):
    epoch = int(wildcards.epoch)
    return [f"{OUT}/checkpoints/epoch-{epoch - 1}"] if epoch > 1 else []


def model_folder(wildcards):
    return (
        MODEL_DIR
        if wildcards.model == "base"
        else f"{OUT}/checkpoints/{wildcards.model}"
    )


def shard_files(split, suffix="parquet"):
    """Input function: the files of one split's token shards, as many as the shard plan (a checkpoint) made."""

    def files(wildcards):
        plan = json.loads(Path(checkpoints.plan_shards.get().output[0]).read_text())
        return [
            f"{OUT}/shards/{split}-{entry['shard']}.{suffix}"
            for entry in plan["splits"][split]["shards"]
        ]

    return files


def all_shard_stats(wildcards):
    return [f for split in SPLITS for f in shard_files(split, "stats.json")(wildcards)]


def adapter_params(train):
    """train.tuning and train.lora of a LoRA / QLoRA run (they change the memory, FLOPs and evaluation sizing);
    {} for full and freeze tuning, whose params stay as they were (a params change re-runs a rule).
    """
    if train["tuning"] in ("lora", "qlora"):
        return {"tuning": train["tuning"], "lora": train.get("lora", {})}
    return {}

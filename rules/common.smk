# Shared names and small input functions. Every path of a run lives under results/<run>/.
RUN = config["run"]
OUT = f"results/{RUN}"
MODEL_DIR = f"results/models/{config['model']['name']}"
EPOCHS = list(range(1, config["train"]["epochs"] + 1))
EVAL_MODELS = ["base"] + [f"epoch-{e}" for e in EPOCHS]
SPLITS = ["train", "val", "test"]
SHARDS = list(range(config["tokenize"]["num_shards"]))


wildcard_constraints:
    epoch=r"\d+",
    shard=r"\d+",
    split="train|val|test",
    model=r"base|epoch-\d+",


def trace_files(wildcards):
    files = []
    if config["data"].get("demo", {}).get("n_traces", 0) > 0:
        files.append(f"{OUT}/traces/demo.jsonl")
    return files


def previous_epoch(wildcards):
    epoch = int(wildcards.epoch)
    return [f"{OUT}/checkpoints/epoch-{epoch - 1}"] if epoch > 1 else []


def model_folder(wildcards):
    return MODEL_DIR if wildcards.model == "base" else f"{OUT}/checkpoints/{wildcards.model}"

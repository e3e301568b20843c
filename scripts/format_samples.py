import json

from agenttune.data.format import format_samples
from agenttune.common.manifest import write_json_atomic, write_manifest
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    cfg = {"split": snakemake.params.split, "format": snakemake.params.format}
    tokenizer = None
    if "model" in snakemake.input.keys() and cfg["format"]["chat_template_tools"] == "auto":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(snakemake.input.model)
    out_dir = snakemake.output.stats.rsplit("/", 1)[0]
    with open(snakemake.input.ingest_stats, encoding="utf-8") as fh:
        ingest_stats = json.load(fh)
    stats = format_samples([snakemake.input.traces], out_dir, cfg, snakemake.params.seed,
                           roles=dict(snakemake.params.roles), tokenizer=tokenizer, ingest_stats=ingest_stats,
                           log=log)
    write_json_atomic(snakemake.output.stats, stats)
    inputs = {"traces": snakemake.input.traces}
    if "model" in snakemake.input.keys():
        inputs["model"] = snakemake.input.model
    write_manifest(snakemake.output.manifest, "format_samples", inputs,
                   {**cfg, "roles": dict(snakemake.params.roles), "seed": snakemake.params.seed})
    for split, c in stats["splits"].items():
        r = stats["ratio"][split]
        log(f"{split}: {c.get('samples', 0)} samples, positives:negatives {r['achieved']}"
            + (f", agent share {stats['eta'][split]['achieved']}" if split in stats["eta"] else ""))
    if "augment" in stats:
        augment = stats["augment"]
        for split in ("train", "val"):
            irrelevant = augment["irrelevance"].get(split)
            log(f"{split} augmented: {augment['name_masking'][split]['traces']} traces masked, "
                f"{augment['shuffle_tools'][split]['traces']} shuffled"
                + (f", {irrelevant['copies']} of {irrelevant['target']} irrelevance copies "
                   f"({irrelevant['no_tools_left']} tool traces would keep no tool)" if irrelevant else ""))
    log(f"contamination: {stats['contamination']['items_overlapping']} of {stats['contamination']['items']} test "
        f"items share a {stats['contamination']['ngram']}-gram with training text")

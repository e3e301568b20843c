from agenttune.manifest import config_hash, sha256_path
from agenttune.runlog import stage_log
from agenttune.tokenize import gather_manifest

with stage_log(snakemake.log[0]) as log:
    cfg = snakemake.params.tokenize
    tokenizer = {"folder": snakemake.input.model, "sha256_tokenizer_json": sha256_path(f"{snakemake.input.model}/tokenizer.json")}
    extra = {"max_len": cfg["max_len"], "overlong": cfg["overlong"], "num_shards": cfg["num_shards"],
             "tokenizer": tokenizer, "config_hash": config_hash(cfg)}
    manifest = gather_manifest(snakemake.input.stats, snakemake.output[0], extra)
    log(f"train: {manifest['total_tokens']} tokens -> {snakemake.output[0]}")

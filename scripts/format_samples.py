from agenttune.data import format_samples
from agenttune.manifest import write_json_atomic, write_manifest
from agenttune.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    cfg = {"split": snakemake.params.split, "format": snakemake.params.format}
    stats = format_samples(snakemake.input.traces, snakemake.output.stats.rsplit("/", 1)[0], cfg, snakemake.params.seed)
    write_json_atomic(snakemake.output.stats, stats)
    inputs = {f"traces{i}": p for i, p in enumerate(snakemake.input.traces)}
    write_manifest(snakemake.output.manifest, "format_samples", inputs, {**cfg, "seed": snakemake.params.seed})
    log(f"{stats['traces_read']} traces -> " + ", ".join(f"{s}: {c.get('samples', 0)}" for s, c in stats["splits"].items()))

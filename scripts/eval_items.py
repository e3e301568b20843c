from agenttune.evaluate.items import build_items, write_items
from agenttune.common.manifest import stage_manifest, write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    bench = snakemake.wildcards.benchmark
    inp = snakemake.input
    renderers = None
    if bench != "heldout":
        from agenttune.render.samples import make_renderers

        tokenizer = None
        if "model" in inp.keys():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(inp.model)
        renderers = make_renderers(tokenizer, snakemake.params.format["chat_template_tools"], log)
    items, stats = build_items(bench, dict(snakemake.params.evaluate), snakemake.params.seed,
                               samples_path=inp.get("samples"), train_path=inp.train, format_cfg=snakemake.params.format,
                               renderers=renderers, log=log)
    write_items(snakemake.output.benchmark_items, items)
    tracked = {k: v for k, v in inp.items() if k not in ("code", "bfcl")}
    for path in (inp.get("bfcl") or []):
        tracked[("answers:" if "/possible_answer/" in path else "questions:") + path.rsplit("/", 1)[-1]] = path
    stats["manifest"] = stage_manifest(f"eval_items:{bench}", tracked,
                                       {"evaluate": dict(snakemake.params.evaluate), "seed": snakemake.params.seed})
    write_json_atomic(snakemake.output.stats, stats)

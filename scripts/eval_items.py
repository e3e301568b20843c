from agenttune.evaluate.items import build_items, write_items
from agenttune.common.manifest import stage_manifest, write_json_atomic
from agenttune.common.runlog import stage_log

with stage_log(snakemake.log[0]) as log:
    bench = snakemake.wildcards.benchmark
    inp = snakemake.input
    renderers = None
    if bench != "heldout":
        from agenttune.data.format import make_renderers, resolve_config

        tokenizer = None
        if "model" in inp.keys():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(inp.model)
        fmt = resolve_config({"split": {"val": 0.0, "test": 0.5}, "format": snakemake.params.format})["format"]
        renderers = make_renderers(tokenizer, fmt.get("chat_template_tools", "auto"), log)
    else:
        fmt = snakemake.params.format
    items, stats = build_items(bench, dict(snakemake.params.evaluate), snakemake.params.seed,
                               samples_path=inp.get("samples"), train_path=inp.train, format_cfg=fmt,
                               renderers=renderers, log=log)
    write_items(snakemake.output.benchmark_items, items)
    tracked = {k: v for k, v in inp.items() if k not in ("code", "bfcl")}
    for path in (inp.get("bfcl") or []):
        tracked[("answers:" if "/possible_answer/" in path else "questions:") + path.rsplit("/", 1)[-1]] = path
    stats["manifest"] = stage_manifest(f"eval_items:{bench}", tracked,
                                       {"evaluate": dict(snakemake.params.evaluate), "seed": snakemake.params.seed})
    write_json_atomic(snakemake.output.stats, stats)

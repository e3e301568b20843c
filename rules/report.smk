rule report:
    input:
        scores=expand(f"{OUT}/eval/{{model}}/scores.json", model=EVAL_MODELS),
        predictions=expand(f"{OUT}/eval/{{model}}/predictions.jsonl", model=EVAL_MODELS),
        metrics=expand(f"{OUT}/checkpoints/epoch-{{epoch}}", epoch=EPOCHS),
        data_stats=f"{OUT}/samples/stats.json",
        shards=f"{OUT}/shards/manifest.json",
    output:
        report(f"{OUT}/report.md", caption="../docs/report-caption.rst", category="Report"),
    params:
        run=RUN,
        models=EVAL_MODELS,
    log:
        f"{OUT}/logs/report.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/report.py"

# Everything evaluated -> report.md, report/report.html and the plots; all of them are `snakemake --report`
# outputs with captions (docs/report/*.rst). Only scores and the report depend on λ.


rule report:
    input:
        unpack(report_inputs),
    output:
        md=report(
            f"{OUT}/report.md", caption="../docs/report-caption.rst", category="Report"
        ),
        html=report(
            f"{OUT}/report/report.html",
            caption="../docs/report/html.rst",
            category="Report",
        ),
        score_plot=report(
            f"{OUT}/report/score_per_epoch.svg",
            caption="../docs/report/score_plot.rst",
            category="Plots",
        ),
        loss_plot=report(
            f"{OUT}/report/loss_per_epoch.svg",
            caption="../docs/report/loss_plot.rst",
            category="Plots",
        ),
    log:
        f"{OUT}/logs/report.log",
    group:
        "report"
    conda:
        "../envs/eval.yaml"
    params:
        run=RUN,
        models=EVAL_MODELS,
        benchmarks=EXTRA_BENCHMARKS,
        examples=EVAL["examples"],
    script:
        "../scripts/report.py"

# Evaluation (docs/evaluation.md): benchmark items, built once per run -> predictions per model and benchmark ->
# scores per model. Generation and scoring are separate jobs, so changing λ or the fuzzy metric re-scores without
# regenerating. Also: loss on held-out general chat per model, the human rating sheet, candidate generation.
# Library modules a rule runs are listed as inputs: Snakemake does not see imports, and an edited scorer must
# re-score (an edited generator must regenerate).


from agenttune.cluster.slurm import eval_resources


include: "evaluate_common.smk"


wildcard_constraints:
    bench="val|bfcl",
    benchmark="heldout|val|bfcl",


rule eval_items:
    input:
        unpack(eval_items_inputs),
        code=library_code("scripts/eval_items.py"),
    output:
        benchmark_items=f"{OUT}/eval/items/{{benchmark}}.jsonl",
        stats=f"{OUT}/eval/items/{{benchmark}}.json",
    log:
        f"{OUT}/logs/eval_items/{{benchmark}}.log",
    group:
        "data"
    conda:
        "../envs/eval.yaml"
    params:
        evaluate=eval_items_config,
        format=config["format"],
        seed=config["seed"],
    script:
        "../scripts/eval_items.py"


rule predict:
    input:
        model=model_folder,
        benchmark_items=f"{OUT}/eval/items/heldout.jsonl",
        eval_jobs=ancient(f"{OUT}/cost/eval_jobs.json"),
        code=library_code("scripts/predict.py"),
    output:
        predictions=f"{OUT}/eval/{{model}}/predictions.jsonl",
        manifest=f"{OUT}/eval/{{model}}/predict.json",
    log:
        f"{OUT}/logs/predict/{{model}}.log",
    conda:
        PREDICT_ENV
    threads: 2
    resources:
        **eval_resources("predict", config),
    params:
        # evaluate.batch_size is not a param (the script reads it from the config): with the exact engine (CPU)
        # outputs do not depend on it (agenttune.evaluate.generate), so changing it must re-run nothing; on a GPU
        # (the hf engine) they may differ by float rounding, and predict.json records the engine.
        generation=GENERATION,
        seed=config["seed"],
    script:
        "../scripts/predict.py"


use rule predict as predict_benchmark with:
    input:
        model=model_folder,
        benchmark_items=f"{OUT}/eval/items/{{bench}}.jsonl",
        eval_jobs=ancient(f"{OUT}/cost/eval_jobs.json"),
        code=library_code("scripts/predict.py"),
    output:
        predictions=f"{OUT}/eval/{{model}}/{{bench}}/predictions.jsonl",
        manifest=f"{OUT}/eval/{{model}}/{{bench}}/predict.json",
    log:
        f"{OUT}/logs/predict/{{model}}-{{bench}}.log",
    resources:
        **eval_resources("predict_benchmark", config),


rule score:
    input:
        predictions=f"{OUT}/eval/{{model}}/predictions.jsonl",
        benchmarks=expand(
            f"{OUT}/eval/{{{{model}}}}/{{bench}}/predictions.jsonl",
            bench=EXTRA_BENCHMARKS,
        ),
        code=library_code("scripts/score.py"),
    output:
        f"{OUT}/eval/{{model}}/scores.json",
    log:
        f"{OUT}/logs/score/{{model}}.log",
    group:
        "report"
    conda:
        "../envs/eval.yaml"
    params:
        lam=EVAL["lambda"],
        fuzzy=EVAL["fuzzy"],
        benchmarks=EXTRA_BENCHMARKS,
    script:
        "../scripts/score.py"


rule general_items:
    input:
        unpack(general_items_inputs),
        code=library_code("scripts/general_items.py"),
    output:
        general_items=f"{OUT}/eval/general/items.jsonl",
        stats=f"{OUT}/eval/general/items.json",
    log:
        f"{OUT}/logs/general_items.log",
    group:
        "data"
    conda:
        "../envs/eval.yaml"
    params:
        general=GENERAL,
        seed=config["seed"],
    script:
        "../scripts/general_items.py"


rule general_loss:
    input:
        model=model_folder,
        general_items=f"{OUT}/eval/general/items.jsonl",
        eval_jobs=ancient(f"{OUT}/cost/eval_jobs.json"),
        code=library_code("scripts/general_loss.py"),
    output:
        f"{OUT}/eval/{{model}}/general.json",
    log:
        f"{OUT}/logs/general_loss/{{model}}.log",
    conda:
        "../envs/eval.yaml"
    threads: 2
    resources:
        **eval_resources("general_loss", config),
    params:
        precision=EVAL["precision"],
        attn_implementation=EVAL["attn_implementation"],
    script:
        "../scripts/general_loss.py"


rule human_sheet:
    input:
        benchmark_items=f"{OUT}/eval/items/heldout.jsonl",
        predictions=expand(
            f"{OUT}/eval/{{model}}/predictions.jsonl", model=HUMAN_MODELS
        ),
        code=library_code("scripts/human_sheet.py"),
    output:
        sheet=f"{OUT}/human/sheet.csv",
        key=f"{OUT}/human/key.json",
        stats=f"{OUT}/human/sheet.json",
    log:
        f"{OUT}/logs/human_sheet.log",
    group:
        "report"
    conda:
        "../envs/eval.yaml"
    params:
        models=HUMAN_MODELS,
        n_items=HUMAN["n_items"],
        seed=config["seed"],
    script:
        "../scripts/human_sheet.py"


rule human_scores:
    input:
        key=f"{OUT}/human/key.json",
        sheets=list((HUMAN.get("sheets") or {}).values()),
        code=library_code("scripts/human_scores.py"),
    output:
        f"{OUT}/human/summary.json",
    log:
        f"{OUT}/logs/human_scores.log",
    group:
        "report"
    conda:
        "../envs/eval.yaml"
    params:
        sheets=HUMAN.get("sheets") or {},
    script:
        "../scripts/human_scores.py"


# Not part of `all`: needs a reachable endpoint. `snakemake --cores 1 candidates` (docs/evaluation.md).
rule generate_candidates:
    input:
        traces=f"{OUT}/traces/traces.jsonl",
        train=f"{OUT}/samples/train.jsonl",
        code=library_code("scripts/generate_candidates.py"),
    output:
        candidates=f"{OUT}/candidates/generated.jsonl",
        stats=f"{OUT}/candidates/generated.json",
    log:
        f"{OUT}/logs/generate_candidates.log",
    conda:
        "../envs/eval.yaml"
    params:
        # The endpoint settings; the API key itself is read from the environment inside the job.
        endpoint=EVAL.get("generate_candidates"),
        seed=config["seed"],
    script:
        "../scripts/generate_candidates.py"


rule candidates:
    input:
        f"{OUT}/candidates/generated.jsonl",

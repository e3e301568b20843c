# Generation and scoring are separate jobs so that changing λ or the fuzzy metric re-scores without regenerating.


rule predict:
    input:
        model=model_folder,
        samples=f"{OUT}/samples/test.jsonl",
    output:
        f"{OUT}/eval/{{model}}/predictions.jsonl",
    params:
        generation={
            k: config["evaluate"].get(k)
            for k in ("max_items", "max_new_tokens", "batch_size")
        },
        seed=config["seed"],
    threads: 2
    log:
        f"{OUT}/logs/predict/{{model}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/predict.py"


rule score:
    input:
        f"{OUT}/eval/{{model}}/predictions.jsonl",
    output:
        f"{OUT}/eval/{{model}}/scores.json",
    params:
        lam=config["evaluate"]["lambda"],
        fuzzy=config["evaluate"]["fuzzy"],
    log:
        f"{OUT}/logs/score/{{model}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/score.py"

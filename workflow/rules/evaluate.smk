# Metrics of one run's samples against the base run's (the reference for Frechet distance and IRS).
rule evaluate_base:
    input:
        samples=rules.sample_base.output[0],
        base=rules.sample_base.output[0],
        package=PACKAGE,
        settings=tracked_params("evaluate_base", lambda w: evaluate_params(w.backbone, "", "base")),
    output:
        f"{RESULTS}/metrics/{{backbone}}/base.parquet",
    params:
        settings=lambda w: evaluate_params(w.backbone, "", "base"),
    log:
        "logs/evaluate/{backbone}/base.log",
    benchmark:
        "benchmarks/stages/evaluate/{backbone}/base.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    script:
        "../../scripts/evaluate.py"


rule evaluate:
    input:
        samples=rules.sample.output[0],
        base=rules.sample_base.output[0],
        package=PACKAGE,
        settings=tracked_params("evaluate", lambda w: evaluate_params(w.backbone, w.reward, w.method)),
    output:
        f"{RESULTS}/metrics/{{backbone}}/{{reward}}/{{method}}.parquet",
    params:
        settings=lambda w: evaluate_params(w.backbone, w.reward, w.method),
    log:
        "logs/evaluate/{backbone}/{reward}/{method}.log",
    benchmark:
        "benchmarks/stages/evaluate/{backbone}/{reward}/{method}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    script:
        "../../scripts/evaluate.py"

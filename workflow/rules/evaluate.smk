# Metrics of one run's samples against the base run's of the same seed (the reference for Frechet distance and
# IRS), per caption split.
rule evaluate_base:
    input:
        samples=rules.sample_base.output[0],
        base=rules.sample_base.output[0],
        package=PACKAGE,
        settings=tracked_params("evaluate_base", lambda w: evaluate_params(w.backbone, "", "base", w.seed)),
    output:
        f"{RESULTS}/metrics/{{backbone}}/base/seed{{seed}}/metrics.parquet",
    log:
        "logs/evaluate/{backbone}/base/seed{seed}.log",
    benchmark:
        "benchmarks/stages/evaluate/{backbone}/base/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=lambda w: evaluate_params(w.backbone, "", "base", w.seed),
    script:
        "../../scripts/evaluate.py"


rule evaluate:
    input:
        samples=rules.sample.output[0],
        base=rules.sample_base.output[0],
        package=PACKAGE,
        settings=tracked_params("evaluate", lambda w: evaluate_params(w.backbone, w.reward, w.method, w.seed)),
    output:
        f"{RESULTS}/metrics/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/metrics.parquet",
    log:
        "logs/evaluate/{backbone}/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/stages/evaluate/{backbone}/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=lambda w: evaluate_params(w.backbone, w.reward, w.method, w.seed),
    script:
        "../../scripts/evaluate.py"

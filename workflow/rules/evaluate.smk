# Metrics of one run's samples against the base run's (the reference for Frechet distance and IRS).
# `snakemake --lint` warns "Mixed rules and functions in same snakefile" for this function: it belongs
# in common.smk, with the other helpers, and moves there once common.smk is free to edit (issue 16).
def evaluate_params(backbone, reward, method):
    return {
        "features": config["features"],
        "toy_world": config["backbones"][backbone]["kind"] == "toy",
        "labels": {"backbone": backbone, "reward": reward, "method": method},
    }


rule evaluate_base:
    input:
        samples=rules.sample_base.output[0],
        base=rules.sample_base.output[0],
        package=PACKAGE,
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

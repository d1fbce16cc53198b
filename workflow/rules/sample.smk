# Evaluation images of both caption splits (the held-out captions and the first training ones, one file with a
# `split` column): the same prompts and seeds for every run and for the untrained base, per replicate seed.
rule sample_base:
    input:
        eval=rules.captions.output.eval,
        train=rules.captions.output.train,
        backbone=backbone_inputs,
        package=PACKAGE,
        settings=tracked_params("sample_base", sample_params),
    output:
        f"{RESULTS}/samples/{{backbone}}/base/seed{{seed}}/images.parquet",
    log:
        "logs/sample/{backbone}/base/seed{seed}.log",
    benchmark:
        "benchmarks/stages/sample/{backbone}/base/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=sample_params,
        lora=None,
    script:
        "../../scripts/sample.py"


rule sample:
    input:
        eval=rules.captions.output.eval,
        train=rules.captions.output.train,
        backbone=backbone_inputs,
        lora=rules.train.output.lora,
        package=PACKAGE,
        settings=tracked_params("sample", sample_params),
    output:
        f"{RESULTS}/samples/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/images.parquet",
    log:
        "logs/sample/{backbone}/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/stages/sample/{backbone}/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=sample_params,
        lora=lambda w: f"{run_path(w.backbone, w.reward, w.method, w.seed)}/lora",
    script:
        "../../scripts/sample.py"

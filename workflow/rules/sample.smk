# Evaluation images: the same prompts and seeds for every run and for the untrained base.
rule sample_base:
    input:
        eval=rules.captions.output.eval,
        backbone=backbone_inputs,
        package=PACKAGE,
        settings=tracked_params("sample_base", sample_params),
    output:
        f"{RESULTS}/samples/{{backbone}}/base/images.parquet",
    params:
        settings=sample_params,
        lora=None,
    log:
        "logs/sample/{backbone}/base.log",
    benchmark:
        "benchmarks/stages/sample/{backbone}/base.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    script:
        "../../scripts/sample.py"


rule sample:
    input:
        eval=rules.captions.output.eval,
        backbone=backbone_inputs,
        lora=rules.train.output.lora,
        package=PACKAGE,
        settings=tracked_params("sample", sample_params),
    output:
        f"{RESULTS}/samples/{{backbone}}/{{reward}}/{{method}}/images.parquet",
    params:
        settings=sample_params,
        lora=lambda w: f"{run_path(w.backbone, w.reward, w.method)}/lora",
    log:
        "logs/sample/{backbone}/{reward}/{method}.log",
    benchmark:
        "benchmarks/stages/sample/{backbone}/{reward}/{method}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    script:
        "../../scripts/sample.py"

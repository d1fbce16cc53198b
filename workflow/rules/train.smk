# One GRPO run per backbone x reward x method x seed (runs.seeds: training replicates). Its resolved settings
# are written to config.json first: a changed hyper-parameter changes exactly the runs it belongs to. A method
# with sa_steps: auto waits for the base model's diversity budget, from which its K is chosen.
rule run_config:
    input:
        unpack(adaptive_k_inputs),
        train=rules.captions.output.train,
        eval=rules.captions.output.eval,
        settings=tracked_params("run_config", run_spec),
    output:
        f"{RESULTS}/runs/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/config.json",
    log:
        "logs/run_config/{backbone}/{reward}/{method}/seed{seed}.log",
    conda:
        "../envs/diversegrpo.yaml"
    params:
        spec=run_spec,
    script:
        "../../scripts/run_config.py"


# Through shell: `python -m diversegrpo.stages.train` for one process, `accelerate launch ... -m
# diversegrpo.stages.train` when train.processes > 1 (TrainLauncher in common.smk).
rule train:
    input:
        config=rules.run_config.output[0],
        backbone=backbone_inputs,
        package=PACKAGE,
    output:
        lora=f"{RESULTS}/runs/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/lora/pytorch_lora_weights.safetensors",
        log=f"{RESULTS}/runs/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/log.parquet",
        curve=f"{RESULTS}/runs/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/curve.parquet",
        timings=f"{RESULTS}/runs/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}/timings.parquet",
    log:
        "logs/train/{backbone}/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/stages/train/{backbone}/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        out=lambda w: run_path(w.backbone, w.reward, w.method, w.seed),
        launch=lambda w: TrainLauncher(train_processes(w.method)),
    shell:
        "{params.launch} -m diversegrpo.stages.train --run-config {input.config} --out {params.out} > {log} 2>&1"

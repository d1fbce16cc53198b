# Toy backbone only: the pipeline pre-trains its own tiny MMDiT on the whole synthetic world (its
# "pre-training data"); GRPO then fine-tunes on the train captions and is evaluated on held-out ones.
rule backbone:
    input:
        package=PACKAGE,
        settings=tracked_params("backbone", pretrain_params),
    output:
        weights=f"{RESULTS}/backbones/{{backbone}}/model.safetensors",
        config=f"{RESULTS}/backbones/{{backbone}}/config.json",
        coverage=f"{RESULTS}/backbones/{{backbone}}/coverage.parquet",
        log=f"{RESULTS}/backbones/{{backbone}}/pretrain_log.parquet",
    log:
        "logs/backbone/{backbone}.log",
    benchmark:
        "benchmarks/stages/backbone/{backbone}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    threads: workflow.cores
    params:
        spec=lambda w: pretrain_params(w)["spec"],
        seed=config["seed"],
        out=lambda w: f"{RESULTS}/backbones/{w.backbone}",
    script:
        "../../scripts/pretrain.py"

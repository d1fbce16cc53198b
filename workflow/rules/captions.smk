rule captions:
    input:
        # The prompt files the stage reads, so that an edited file reruns it (a world's name is no file).
        lambda w: [
            f for f in (config["captions"]["source"], config["captions"].get("eval_source")) if f and f not in WORLDS
        ],
        settings=tracked_params("captions", captions_params),
    output:
        train=f"{RESULTS}/captions/train.parquet",
        eval=f"{RESULTS}/captions/eval.parquet",
    log:
        "logs/captions.log",
    conda:
        "../envs/diversegrpo.yaml"
    params:
        captions=config["captions"],
        seed=config["seed"],
    script:
        "../../scripts/captions.py"

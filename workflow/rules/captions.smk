rule captions:
    output:
        train=f"{RESULTS}/captions/train.parquet",
        eval=f"{RESULTS}/captions/eval.parquet",
    params:
        captions=config["captions"],
        seed=config["seed"],
    log:
        "logs/captions.log",
    script:
        "../../scripts/captions.py"

def caption_files(wildcards):
    """The prompt files the stage reads, so that an edited file reruns it ("toy" is no file)."""
    c = config["captions"]
    return [f for f in (c["source"], c.get("eval_source")) if f and f != "toy"]


rule captions:
    input:
        caption_files,
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

# The paper's tables, Pareto plots, training curves and image grids.
PAIRS = list(dict.fromkeys((b, r) for b, r, _ in RUNS))


rule report:
    input:
        metrics=[f"{RESULTS}/metrics/{b}/{r}/{m}.parquet" for b, r, m in RUNS]
        + [f"{RESULTS}/metrics/{b}/base.parquet" for b in config["runs"]["backbones"]],
        logs=[f"{run_path(*run)}/log.parquet" for run in RUNS],
        curves=[f"{run_path(*run)}/curve.parquet" for run in RUNS],
        samples=[f"{RESULTS}/samples/{b}/{r}/{m}/images.parquet" for b, r, m in RUNS],
        base_samples=[f"{RESULTS}/samples/{b}/base/images.parquet" for b in config["runs"]["backbones"]],
        package=PACKAGE,
    output:
        table_md=f"{RESULTS}/report/table.md",
        table_tex=f"{RESULTS}/report/table.tex",
        summary=f"{RESULTS}/report/summary.json",
        pareto=f"{RESULTS}/report/pareto.png",
        pareto_csv=f"{RESULTS}/report/pareto.csv",
        curves=f"{RESULTS}/report/curves.png",
        grids=[f"{RESULTS}/report/grids/{b}_{r}.png" for b, r in PAIRS],
    params:
        runs=RUNS,
        run_dirs=[run_path(*run) for run in RUNS],
        base_samples={b: f"{RESULTS}/samples/{b}/base/images.parquet" for b in config["runs"]["backbones"]},
        report=config["report"],
    log:
        "logs/report.log",
    conda:
        "../envs/diversegrpo.yaml"
    script:
        "../../scripts/report.py"

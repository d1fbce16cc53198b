# The paper's tables, Pareto plots, training curves and image grids, aggregated over the replicate seeds. The
# report() flags put them, with the captions under workflow/report/, into `snakemake --report report.html` (a
# self-contained HTML file).
PAIRS = list(dict.fromkeys((b, r) for b, r, _, _ in RUNS))
GRID_SEED = SEEDS[0]  # the image grids show the first seed's images


rule report:
    input:
        metrics=[metrics_path(*run) for run in RUNS] + BASE_METRICS,
        logs=[f"{run_path(*run)}/log.parquet" for run in RUNS],
        configs=[f"{run_path(*run)}/config.json" for run in RUNS],  # the K an adaptive run chose
        curves=[f"{run_path(*run)}/curve.parquet" for run in RUNS],
        samples=[samples_path(b, r, m, s) for b, r, m, s in RUNS if s == GRID_SEED],
        base_samples=[base_samples_path(b, GRID_SEED) for b in config["runs"]["backbones"]],
        package=PACKAGE,
        settings=tracked_params("report", report_params),
    output:
        table_md=report(f"{RESULTS}/report/table.md", caption="../report/table.rst", category="Table 1"),
        table_tex=report(f"{RESULTS}/report/table.tex", caption="../report/table_tex.rst", category="Table 1"),
        summary=f"{RESULTS}/report/summary.json",
        pareto=report(f"{RESULTS}/report/pareto.png", caption="../report/pareto.rst", category="Pareto fronts"),
        pareto_csv=f"{RESULTS}/report/pareto.csv",
        curves=report(f"{RESULTS}/report/curves.png", caption="../report/curves.rst", category="Training curves"),
        grids=[
            report(
                f"{RESULTS}/report/grids/{b}_{r}.png",
                caption="../report/grid.rst",
                category="Image grids",
                labels={"backbone": b, "reward": r},
            )
            for b, r in PAIRS
        ],
    log:
        "logs/report.log",
    conda:
        "../envs/diversegrpo.yaml"
    params:
        runs=RUNS,
        run_dirs=[run_path(*run) for run in RUNS],
        grid_runs=[run[:3] for run in RUNS if run[3] == GRID_SEED],
        base_samples={b: base_samples_path(b, GRID_SEED) for b in config["runs"]["backbones"]},
        seeds=SEEDS,
        report=config["report"],
    script:
        "../../scripts/report.py"

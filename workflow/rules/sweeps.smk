# The paper's trends, beta and K (`snakemake sweeps`, not part of `all`): every point of the sweeps section is a run
# of the swept method with one key changed, trained, sampled and evaluated by the usual rules for every backbone,
# reward and seed of runs.*; this gathers their metrics and train times into one table and a figure per parameter,
# with the seeds at each point that meet every claim of the report's check.
SWEEP_POINTS = cfg.sweep_points(config)
SWEEP_RUNS = [
    (b, r, m, s)
    for b in config["runs"]["backbones"]
    for r in config["runs"]["rewards"]
    for m in dict.fromkeys(m for _, _, m in SWEEP_POINTS)
    for s in SEEDS
]
# what the claims of each point are checked against: the base model, Flow-GRPO and SA-Reg, where the matrix has them
SWEEP_REFERENCES = BASE_METRICS + [metrics_path(*run) for run in RUNS if run[2] in CLAIM_REFERENCES]


rule sweeps:
    input:
        metrics=[metrics_path(*run) for run in SWEEP_RUNS],
        timings=[f"{run_path(*run)}/timings.parquet" for run in SWEEP_RUNS],
        references=SWEEP_REFERENCES,
        package=PACKAGE,
    output:
        table=f"{RESULTS}/analyses/sweeps.parquet",
        beta_png=report(f"{RESULTS}/analyses/sweeps_beta.png", caption="../report/sweeps.rst", category="Analyses"),
        sa_steps_png=report(
            f"{RESULTS}/analyses/sweeps_sa_steps.png", caption="../report/sweeps.rst", category="Analyses"
        ),
    log:
        "logs/sweeps.log",
    conda:
        "../envs/diversegrpo.yaml"
    params:
        points=SWEEP_POINTS,
        runs=SWEEP_RUNS,
    script:
        "../../scripts/sweeps.py"

# The paper's analyses: the diversity budget per denoising step (branched rollouts of each run and of the base
# model, one job each), then, in seconds, sample efficiency and replicator dynamics of the modes (from the
# training logs; the dynamics in a world with ground truth) and the budgets gathered, each a table and a figure.
rule budget_base:
    input:
        eval=rules.captions.output.eval,
        backbone=backbone_inputs,
        package=PACKAGE,
        settings=tracked_params("budget_base", budget_params),
    output:
        f"{RESULTS}/analyses/budget/{{backbone}}/base/seed{{seed}}.parquet",
    log:
        "logs/budget/{backbone}/base/seed{seed}.log",
    benchmark:
        "benchmarks/stages/budget/{backbone}/base/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=budget_params,
        lora=None,
    script:
        "../../scripts/budget.py"


rule budget:
    input:
        eval=rules.captions.output.eval,
        backbone=backbone_inputs,
        lora=rules.train.output.lora,
        package=PACKAGE,
        settings=tracked_params("budget", budget_params),
    output:
        f"{RESULTS}/analyses/budget/{{backbone}}/{{reward}}/{{method}}/seed{{seed}}.parquet",
    log:
        "logs/budget/{backbone}/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/stages/budget/{backbone}/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/diversegrpo.yaml"
    params:
        settings=budget_params,
        lora=lambda w: f"{run_path(w.backbone, w.reward, w.method, w.seed)}/lora",
    script:
        "../../scripts/budget.py"


rule analyses:
    input:
        logs=[f"{run_path(*run)}/log.parquet" for run in RUNS],
        budgets=[budget_path(*run) for run in RUNS],
        base_budgets=[budget_path(b, "base", None, s) for b in config["runs"]["backbones"] for s in SEEDS],
        package=PACKAGE,
    output:
        efficiency=f"{RESULTS}/analyses/efficiency.parquet",
        efficiency_png=report(
            f"{RESULTS}/analyses/efficiency.png", caption="../report/efficiency.rst", category="Analyses"
        ),
        replicator=f"{RESULTS}/analyses/replicator.parquet",
        replicator_png=report(
            f"{RESULTS}/analyses/replicator.png", caption="../report/replicator.rst", category="Analyses"
        ),
        budget=f"{RESULTS}/analyses/budget.parquet",
        budget_png=report(f"{RESULTS}/analyses/budget.png", caption="../report/budget.rst", category="Analyses"),
    log:
        "logs/analyses.log",
    conda:
        "../envs/diversegrpo.yaml"
    params:
        runs=RUNS,
        run_dirs=[run_path(*run) for run in RUNS],
        base_runs=[(b, "base", "base", s) for b in config["runs"]["backbones"] for s in SEEDS],
    script:
        "../../scripts/analyses.py"

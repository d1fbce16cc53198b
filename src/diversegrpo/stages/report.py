"""The report stage: gather every run's metrics, logs, curves and samples into the paper's outputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import report
from ..io import read_parquet, write_csv, write_json, write_text


def report_stage(
    metrics_files: list[str],
    runs: list[tuple[str, str, str]],
    run_dirs: list[str],
    base_samples: dict[str, str],
    run_samples: list[str],
    grid_prompts: int,
    grid_images: int,
    outputs: dict[str, str],
) -> None:
    metrics = pd.concat(
        [read_parquet(f, "metrics", "evaluate_base" if Path(f).name == "base.parquet" else "evaluate")
         for f in metrics_files],
        ignore_index=True,
    )
    rewards = sorted({r for _, r, _ in runs})
    table = report.paper_table(report.overall_table(metrics), rewards)
    errors = None
    if (metrics.scope == "overall_se").any():  # metrics evaluated before standard errors existed have none
        errors = report.paper_table(report.overall_table(metrics, "overall_se"), rewards)
    write_text(report.to_markdown(table, errors), outputs["table_md"])
    write_text(report.to_latex(table, errors), outputs["table_tex"])
    write_json(report.summary(table), outputs["summary"])

    curves = {run: read_parquet(Path(d) / "curve.parquet", "training curve", "train") for run, d in zip(runs, run_dirs)}
    logs = {run: read_parquet(Path(d) / "log.parquet", "training log", "train") for run, d in zip(runs, run_dirs)}
    pareto = report.pareto_data(curves)
    write_csv(pareto, outputs["pareto_csv"])
    report.plot_pareto(pareto, table, outputs["pareto"])
    report.plot_curves(logs, outputs["curves"])

    samples = {run: read_parquet(f, "samples", "sample") for run, f in zip(runs, run_samples)}
    for backbone, reward in dict.fromkeys((b, r) for b, r, _ in runs):
        chosen = {"base": read_parquet(base_samples[backbone], "base samples", "sample_base")}
        chosen.update({m: samples[(b, r, m)] for (b, r, m) in runs if (b, r) == (backbone, reward)})
        prompts = list(dict.fromkeys(chosen["base"].prompt))[:grid_prompts]
        report.plot_grid(chosen, prompts, grid_images, outputs["grids_dir"] + f"/{backbone}_{reward}.png")

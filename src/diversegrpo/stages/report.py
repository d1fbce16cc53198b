"""The report stage: gather every run's metrics (every seed, both caption splits), logs, curves and samples
into the paper's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import figures, tables
from ..io import read_parquet, reading, write_csv, write_json, write_text


def report_stage(
    metrics_files: list[str],
    runs: list[tuple[str, str, str, int]],
    run_dirs: list[str],
    grid_runs: list[tuple[str, str, str]],
    grid_samples: list[str],
    base_samples: dict[str, str],
    seeds: list[int],
    grid_prompts: int,
    grid_images: int,
    outputs: dict[str, str],
) -> None:
    """`runs` (backbone, reward, method, seed) with their directories `run_dirs`; the image grids show
    `grid_samples` of `grid_runs` and the base model's `base_samples` per backbone (one seed's)."""
    metrics = pd.concat(
        [read_parquet(f, "metrics", "evaluate_base" if Path(f).parent.parent.name == "base" else "evaluate")
         for f in metrics_files],
        ignore_index=True,
    )
    rewards = sorted({run[1] for run in runs})
    mean, spread, per_seed = tables.aggregate(metrics)
    split_tables = tables.split_tables(mean, spread, rewards)
    ratios = tables.ratios(per_seed, tables.overall_table(metrics, "overall_se"))
    runs = [tuple(run) for run in runs]
    chosen_k = adaptive_k_records(runs, run_dirs)
    write_text(tables.table1_markdown(split_tables, ratios, seeds) + tables.adaptive_k_markdown(chosen_k),
               outputs["table_md"])
    write_text(tables.table1_latex(split_tables, ratios, seeds), outputs["table_tex"])
    summary = tables.summary(split_tables, per_seed, ratios, seeds)
    write_json({**summary, "adaptive_k": chosen_k} if chosen_k else summary, outputs["summary"])

    curves = {run: read_parquet(Path(d) / "curve.parquet", "training curve", "train") for run, d in zip(runs, run_dirs)}
    logs = {run: read_parquet(Path(d) / "log.parquet", "training log", "train") for run, d in zip(runs, run_dirs)}
    pareto = figures.pareto_data(curves)
    write_csv(pareto, outputs["pareto_csv"])
    figures.plot_pareto(pareto, split_tables, outputs["pareto"])
    figures.plot_curves(logs, outputs["curves"])

    samples = {tuple(run): read_parquet(f, "samples", "sample") for run, f in zip(grid_runs, grid_samples)}
    for backbone, reward in dict.fromkeys((b, r) for b, r, _ in samples):
        chosen = {"base": read_parquet(base_samples[backbone], "base samples", "sample_base")}
        chosen.update({m: samples[(b, r, m)] for (b, r, m) in samples if (b, r) == (backbone, reward)})
        chosen = {name: table[table.split == "eval"] for name, table in chosen.items()}  # the held-out captions
        prompts = list(dict.fromkeys(chosen["base"].prompt))[:grid_prompts]
        figures.plot_grid(chosen, prompts, grid_images, outputs["grids_dir"] + f"/{backbone}_{reward}.png")


def adaptive_k_records(runs: list[tuple], run_dirs: list[str]) -> list[dict]:
    """For every run whose K sa_steps: auto chose: its keys and its config.json's record of the choice."""
    records = []
    for (backbone, reward, method, seed), d in zip(runs, run_dirs):
        with reading("run config", Path(d) / "config.json", "run_config"):
            chosen = json.loads((Path(d) / "config.json").read_text()).get("adaptive_k")
        if chosen:
            records.append({"backbone": backbone, "reward": reward, "method": method, "seed": int(seed),
                            **{k: chosen[k] for k in ("share", "sa_steps", "decided")}})
    return records

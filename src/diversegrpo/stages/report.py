"""The report stage: gather every run's metrics (every seed, both caption splits), logs, curves and samples
into the paper's outputs."""

from __future__ import annotations

import json
from pathlib import Path

from .. import claims, figures, tables
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
    metrics = tables.read_metrics(metrics_files)
    rewards = sorted({run[1] for run in runs})
    seeds_tables = tables.aggregate(metrics)
    per_seed, errors = seeds_tables.per_seed, seeds_tables.errors
    split_tables = tables.split_tables(seeds_tables.mean, seeds_tables.spread, rewards)
    ratios = tables.ratios(per_seed, errors)
    runs = [tuple(run) for run in runs]
    configs = [run_config(d) for d in run_dirs]
    chosen_k = adaptive_k_records(runs, configs)
    checked = claims.check(per_seed, errors, creative_methods(runs, configs))
    write_text(tables.table1_markdown(split_tables, ratios, seeds) + tables.adaptive_k_markdown(chosen_k)
               + claims.markdown(checked), outputs["table_md"])
    write_text(tables.table1_latex(split_tables, ratios, seeds), outputs["table_tex"])
    summary = tables.summary(split_tables, per_seed, ratios, seeds)
    if chosen_k:
        summary["adaptive_k"] = chosen_k
    if len(checked):
        summary["claims"] = claims.summary(checked)
    write_json(summary, outputs["summary"])

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


def run_config(run_dir: str) -> dict:
    with reading("run config", Path(run_dir) / "config.json", "run_config"):
        return json.loads((Path(run_dir) / "config.json").read_text())


def creative_methods(runs: list[tuple], configs: list[dict]) -> list[str]:
    """The DiverseGRPO variants: the methods trained with a creative reward, whatever their names."""
    return list(dict.fromkeys(method for (_, _, method, _), c in zip(runs, configs) if c["method"].get("creative")))


def adaptive_k_records(runs: list[tuple], configs: list[dict]) -> list[dict]:
    """For every run whose K sa_steps: auto chose: its keys and its config.json's (`configs`) record of the choice."""
    records = []
    for (backbone, reward, method, seed), config in zip(runs, configs):
        chosen = config.get("adaptive_k")
        if chosen:
            records.append({"backbone": backbone, "reward": reward, "method": method, "seed": int(seed),
                            **{k: chosen[k] for k in ("share", "sa_steps", "decided")}})
    return records

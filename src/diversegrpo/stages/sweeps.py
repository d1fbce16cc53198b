"""The sweeps stage: the paper's two trends. DiverseGRPO's diversity rises with the creative weight beta and
saturates; a larger K (SA-Reg's constrained steps) helps with diminishing returns, at more compute. Each point of the
sweeps section is a run of the swept method with one key changed (config.sweep_points); per point, backbone, reward
and caption split: the mean over seeds and the standard deviation of its diversity, its own reward (own_reward),
valid share and mode entropy (in a world with modes), its training seconds per iteration (timings.parquet:
sampling, scoring and the train pass, where K's reference forwards are paid), and how many of its seeds meet every
claim of the report's check (claims.py) against the base model, Flow-GRPO and SA-Reg."""

from __future__ import annotations

import math

import pandas as pd

from .. import claims, figures, tables
from ..config import SWEEP_KEYS
from ..io import read_parquet, write_parquet

MEASURES = ("diversity", "own_reward", "valid_share", "mode_entropy", "seconds_per_iteration")


def seconds_per_iteration(timings: pd.DataFrame) -> float:
    """Wall seconds of one iteration (sampling, scoring, training) averaged over a run's timings.parquet."""
    return float(timings[["seconds_sample", "seconds_score", "seconds_train"]].sum(axis=1).mean())


def sweep_table(points: list[tuple], metrics: pd.DataFrame, seconds: dict[tuple, float],
                checked: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (parameter, value, backbone, reward, split) of `points` (parameter, value, method): the mean over
    seeds of each measure and, with two seeds or more, its sample standard deviation (`<measure>_std`). `metrics`:
    the evaluate stage's long tables of the points' runs; `seconds`: (backbone, reward, method, seed) -> seconds per
    iteration; `checked`: claims.check's rows, which give `claims_met` (the seeds meeting every claim) of
    `claims_seeds` (those checked, 0 where the references are missing)."""
    per_seed = tables.overall_table(metrics)
    per_seed["own_reward"] = [row[f"reward_{row['reward']}"] for row in per_seed.to_dict("records")]
    per_seed["seconds_per_iteration"] = [seconds[(b, r, m, int(s))] for b, r, m, s in
                                         zip(per_seed.backbone, per_seed.reward, per_seed.method, per_seed.seed)]
    rows = []
    for param, value, method in points:
        for (split, backbone, reward), runs in per_seed[per_seed.method == method].groupby(
                ["split", "backbone", "reward"], sort=False):
            row = {"parameter": param, "value": value, "method": method, "backbone": backbone, "reward": reward,
                   "split": split, "seeds": len(runs)}
            for measure in (m for m in MEASURES if m in runs):
                row[measure] = float(runs[measure].mean())
                row[f"{measure}_std"] = float(runs[measure].std(ddof=1)) if len(runs) > 1 else math.nan
            if checked is not None:
                mine = checked[(checked.method == method) & (checked.split == split) & (checked.backbone == backbone)
                               & (checked.reward == reward)]
                row |= {"claims_met": int(mine["all"].sum()), "claims_seeds": len(mine)}
            rows.append(row)
    return pd.DataFrame(rows)


def sweeps_stage(points: list[tuple], runs: list[tuple], metrics_files: list[str], timings_files: list[str],
                 outputs: dict[str, str], reference_files: list[str] = ()) -> None:
    """`points` (parameter, value, method); `runs` (backbone, reward, method, seed) of every point, with their
    metrics and timings files in the same order; `reference_files`: the metrics of the base model and of the
    claims' reference methods (methods.REFERENCES). Writes the table and one figure per parameter."""
    runs = [(b, r, m, int(s)) for b, r, m, s in runs]
    metrics = tables.read_metrics(metrics_files)
    seconds = {run: seconds_per_iteration(read_parquet(f, "timings", "train")) for run, f in zip(runs, timings_files)}
    if reference_files:
        every = pd.concat([metrics, tables.read_metrics(reference_files)], ignore_index=True)
    else:
        every = metrics
    checked = claims.check(tables.overall_table(every), tables.overall_table(every, "overall_se"),
                           [m for _, _, m in points])
    table = sweep_table(points, metrics, seconds, checked)
    write_parquet(table, outputs["table"])
    print(table.to_string())
    for param in SWEEP_KEYS:  # a figure each, empty for a parameter with no values
        figures.plot_sweep(table[table.parameter == param], param, outputs[f"{param}_png"])

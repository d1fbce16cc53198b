"""The analyses stage: sample efficiency and replicator dynamics from every run's training log (the latter for
runs in a world with ground-truth modes), and the diversity budgets of the budget stage gathered,
each a Parquet table and a figure.

Sample efficiency: for each run, the first iteration at which its training reward (log.parquet, averaged over
EFFICIENCY_WINDOW iterations) reaches Flow-GRPO's final one of the same backbone, reward and seed (the held-out
curve is evaluated too rarely, on too few captions, to say when). Replicator dynamics: the per-iteration mode shares
and per-mode mean rewards of the rollouts (log.parquet's mode_share_* / mode_quality_* / mode_reward_*), one
learning rate eta fitted per run (dynamics.fit_replicator). For DiverseGRPO, Flow-GRPO's eta also predicts
its shares twice, from its quality alone and from the reward its advantages saw (quality with the creative
bonus): how much of the difference the creative term explains."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import dynamics, figures
from ..io import read_parquet, write_parquet
from ..methods import BASELINE

# Iterations the training reward is averaged over: one iteration's 8 prompts x 8 rollouts are too noisy to say
# when a level is reached. Default run, iterations 60-119: the iteration-to-iteration standard deviation of
# the reward is 0.038-0.057, that of its 10-iteration average 0.014-0.022 (Flow-GRPO and DiverseGRPO).
EFFICIENCY_WINDOW = 10
KEYS = ["backbone", "reward", "method", "seed"]


def smoothed_reward(log: pd.DataFrame, window: int = EFFICIENCY_WINDOW) -> pd.Series:
    """The training log's reward (the rollouts' mean quality) per iteration, averaged over the last `window`
    iterations (NaN before the first full window)."""
    return log.set_index("iteration").reward_mean.rolling(window, min_periods=window).mean()


def efficiency_table(logs: dict[tuple, pd.DataFrame], window: int = EFFICIENCY_WINDOW) -> pd.DataFrame:
    """One row per run: the baseline's final smoothed training reward of the same (backbone, reward, seed), the
    first iteration at which the run's smoothed reward reaches it (NaN: never) and the run's last iteration."""
    smooth = {run: smoothed_reward(log, window) for run, log in logs.items()}
    final = {run[:2] + run[3:]: float(s.iloc[-1]) for run, s in smooth.items() if run[2] == BASELINE}
    rows = []
    for (b, r, m, seed), s in smooth.items():
        target = final.get((b, r, seed), math.nan)
        rows.append({"backbone": b, "reward": r, "method": m, "seed": int(seed), "target": target,
                     "final_reward": float(s.iloc[-1]),
                     "reached": dynamics.first_reaching(s.index.to_numpy(), s.to_numpy(), target),
                     "last_iteration": int(s.index[-1])})
    return pd.DataFrame(rows)


def mode_series(log: pd.DataFrame, signal: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, K) measured shares and (T - 1, K) per-mode mean `signal` ("quality" or "reward") of the steps between
    them, from a training log's rows (one per iteration, measured before its update)."""
    modes = [c.removeprefix("mode_share_") for c in log.columns if c.startswith("mode_share_")]
    shares = log[[f"mode_share_{m}" for m in modes]].to_numpy(float)
    rewards = log[[f"mode_{signal}_{m}" for m in modes]].to_numpy(float)
    return shares, rewards[:-1]


def replicator_table(logs: dict[tuple, pd.DataFrame]) -> pd.DataFrame:
    """One row per run whose log has mode shares: eta and R^2 of its own fit (quality), and for every other method
    than Flow-GRPO the R^2 of Flow-GRPO's eta (same backbone, reward, seed) predicting its shares from its quality
    (`r2_baseline_quality`) and from the reward its advantages saw (`r2_baseline_reward`; they differ where a
    creative bonus was mixed in)."""
    series = {run: {signal: mode_series(log, signal) for signal in ("quality", "reward")}
              for run, log in logs.items() if any(c.startswith("mode_share_") for c in log.columns)}
    fits = {run: dynamics.fit_replicator(*by_signal["quality"]) for run, by_signal in series.items()}
    rows = []
    for (b, r, m, s), fit in fits.items():
        shares = series[(b, r, m, s)]["quality"][0]  # (T, K), the same for either signal
        row = {"backbone": b, "reward": r, "method": m, "seed": int(s), "eta": fit.eta, "r2": fit.r2,
               "top_share_start": float(fit.predicted[0].max()), "top_share_end": float(shares[-1].max())}
        baseline = fits.get((b, r, BASELINE, s))
        if m != BASELINE and baseline is not None:
            for signal, (_, rewards) in series[(b, r, m, s)].items():
                predicted = dynamics.replicator_trajectory(shares[0], rewards, baseline.eta)
                row[f"r2_baseline_{signal}"] = dynamics.r_squared(shares, predicted)
        rows.append(row)
    return pd.DataFrame(rows)


def analyses_stage(runs: list[tuple], run_dirs: list[str], base_runs: list[tuple], budget_files: list[str],
                   outputs: dict[str, str]) -> None:
    """`runs` (backbone, reward, method, seed) with their directories, `base_runs` the base model's (backbone,
    "base", "base", seed); `budget_files` the budget stage's tables of `runs`, then of `base_runs`. Writes
    the three tables and their figures."""
    runs = [tuple(run[:3]) + (int(run[3]),) for run in runs]
    logs = {run: read_parquet(f"{d}/log.parquet", "training log", "train") for run, d in zip(runs, run_dirs)}
    efficiency = efficiency_table(logs)
    replicator = replicator_table(logs)
    budget = budget_table(dict(zip([*runs, *map(tuple, base_runs)], budget_files)))
    for name, table in (("efficiency", efficiency), ("replicator", replicator), ("budget", budget)):
        write_parquet(table, outputs[name])
    print(efficiency.to_string(), replicator.to_string(), budget_summary(budget).to_string(), sep="\n\n")
    figures.plot_efficiency({run: smoothed_reward(log) for run, log in logs.items()}, efficiency,
                            outputs["efficiency_png"])
    figures.plot_replicator(replicator_panels(logs, replicator), outputs["replicator_png"])
    figures.plot_budget(budget_summary(budget), outputs["budget_png"])


def budget_table(files: dict[tuple, str]) -> pd.DataFrame:
    """The budget stage's tables, each labelled with its (backbone, reward, method, seed)."""
    tables = []
    for (b, r, m, s), path in files.items():
        table = read_parquet(path, "diversity budget", "budget_base" if r == "base" else "budget")
        tables.append(table.assign(backbone=b, reward=r, method=m, seed=int(s)))
    return pd.concat(tables, ignore_index=True)[[*KEYS, "prompt", "j", "diversity", "budget", "keep_mode"]]


def budget_summary(budget: pd.DataFrame, resamples: int = 200) -> pd.DataFrame:
    """Per (backbone, reward, method) and j, over captions and seeds: the share of the mean diversity that the first
    j draws decide, 1 - mean D(j) / mean D(0) (a ratio of means: a collapsed run's single captions have D(0) near 0),
    and its bootstrap standard error over the (caption, seed) pairs (`resamples` draws, a fixed seed)."""
    rng, rows = np.random.default_rng(0), []
    for key, table in budget.groupby(KEYS[:3], sort=False):
        d = table.pivot_table(index=["seed", "prompt"], columns="j", values="diversity").to_numpy()  # (units, J)
        picks = rng.integers(len(d), size=(resamples, len(d)))  # (resamples, units)
        shares = dynamics.diversity_budget(d[picks].mean(axis=1))  # (resamples, J)
        share = dynamics.diversity_budget(d.mean(axis=0))  # (J,)
        error = np.nanstd(shares, axis=0, ddof=1) if len(d) > 1 else np.full(d.shape[1], np.nan)
        rows += [dict(zip(KEYS[:3], key)) | {"j": j, "mean": m, "std": e} for j, (m, e) in enumerate(zip(share, error))]
    return pd.DataFrame(rows)


def replicator_panels(logs: dict[tuple, pd.DataFrame], replicator: pd.DataFrame) -> dict[str, tuple]:
    """Title -> (measured, predicted) (T, K) shares of each run of the first seed, predicted with its own eta."""
    panels = {}
    for row in replicator[replicator.seed == replicator.seed.min()].to_dict("records") if len(replicator) else []:
        shares, rewards = mode_series(logs[(row["backbone"], row["reward"], row["method"], row["seed"])], "quality")
        title = f"{row['reward']}/{row['method']}: eta {row['eta']:.3g}, R2 {row['r2']:.2f}"
        panels[title] = (shares, dynamics.replicator_trajectory(shares[0], rewards, row["eta"]))
    return panels

"""The paper's figures: reward-diversity Pareto plots per caption split, training curves, and image grids on
shared prompts and seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .io import atomic_path, png_tensor  # noqa: E402
from .tables import split_title  # noqa: E402


def pareto_data(curves: dict[tuple, pd.DataFrame]) -> pd.DataFrame:
    """Every ODE evaluation of every run (curve.parquet: the held-out prompts), one row each; curves are keyed
    by (backbone, reward, method, seed)."""
    rows = []
    for (backbone, reward, method, seed), curve in curves.items():
        for r in curve.to_dict("records"):
            rows.append(
                {
                    "run": f"{backbone}/{reward}/{method}/seed{seed}",
                    "backbone": backbone,
                    "reward": reward,
                    "method": method,
                    "seed": int(seed),
                    "iteration": int(r["iteration"]),
                    "diversity": r["diversity"],
                    "reward_value": r["reward_reward"],
                }
            )
    return pd.DataFrame(rows)


def plot_pareto(data: pd.DataFrame, tables: dict[str, tuple], path) -> None:
    """Reward vs diversity, a row of panels per caption split, a panel per backbone and reward. On the
    held-out (eval) split, each method's path over training checkpoints (curve.parquet, the mean over
    seeds per iteration); on every split, stars for the final evaluation of the sample stage (base
    included): the mean over seeds with the spread as error bars."""
    pairs = list(dict.fromkeys(zip(data.backbone, data.reward)))
    for table, _ in tables.values():
        pairs += [p for p in dict.fromkeys(zip(table.backbone, table.reward)) if p not in pairs]
    splits = list(tables) or ["eval"]
    methods = list(dict.fromkeys([*data.get("method", []), *(m for t, _ in tables.values() for m in t.method)]))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(m for m in methods if m != "base")} | {
        "base": "black"}
    fig, axes = plt.subplots(len(splits), max(len(pairs), 1), figsize=(5 * max(len(pairs), 1), 4 * len(splits)),
                             squeeze=False)
    for ax_row, split in zip(axes, splits):
        final, spread = tables.get(split, (pd.DataFrame(), pd.DataFrame()))
        for ax, (backbone, reward) in zip(ax_row, pairs):
            if split == "eval" and len(data):
                runs = data[(data.backbone == backbone) & (data.reward == reward)]
                for method, curve in runs.groupby("method", sort=False):
                    curve = curve.groupby("iteration")[["diversity", "reward_value"]].mean().reset_index()
                    ax.plot(curve.diversity, curve.reward_value, "-o", ms=3, color=colours.get(method),
                            label=f"{method} (training)")
                    ax.annotate(str(curve.iteration.iloc[-1]),
                                (curve.diversity.iloc[-1], curve.reward_value.iloc[-1]), fontsize=7)
            column = f"reward_{reward}"
            if column in final:
                rows = final[(final.backbone == backbone) & (final.reward == reward)]
                errors = spread.set_index(["backbone", "reward", "method"]).to_dict("index") if len(spread) else {}
                for row in rows.to_dict("records"):
                    x, y = row["diversity"], row[column]  # column access: any reward name, '-' and '.' included
                    if pd.isna(x) or pd.isna(y):
                        continue
                    error = errors.get((backbone, reward, row["method"]), {})
                    xerr, yerr = (error.get(c) for c in ("diversity", column))
                    colour = colours.get(row["method"], "black")
                    ax.errorbar(x, y, xerr=None if xerr is None or pd.isna(xerr) else xerr,
                                yerr=None if yerr is None or pd.isna(yerr) else yerr, fmt="none", ecolor=colour,
                                elinewidth=0.8, zorder=2)
                    ax.scatter(x, y, marker="*", s=120, color=colour, zorder=3)
                    ax.annotate(f"{row['method']} (final)", (x, y), fontsize=7, xytext=(4, -8),
                                textcoords="offset points")
            ax.set(title=f"{backbone} / {reward}: {split_title(split)}", xlabel="diversity (mean pairwise distance)",
                   ylabel=f"{reward} reward")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    _save(fig, path)


def plot_curves(logs: dict[tuple, pd.DataFrame], path) -> None:
    """Per iteration of each (backbone, reward, method): the training log's metrics, the mean over the seeds'
    logs (keyed by (backbone, reward, method, seed)), smoothed over 5 iterations."""
    metrics = ["reward_mean", "diversity", "clusters", "regularizer"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5))
    for (_backbone, reward, method) in dict.fromkeys(run[:3] for run in logs):
        seeds = [log for run, log in logs.items() if run[:3] == (_backbone, reward, method)]
        log = pd.concat(seeds).groupby("iteration", sort=True)[metrics].mean().reset_index()
        for ax, m in zip(axes, metrics):
            smooth = log[m].rolling(5, min_periods=1).mean()
            ax.plot(log.iteration, smooth, label=f"{reward}/{method}")
            ax.set(title=m, xlabel="iteration")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def plot_grid(samples: dict[str, pd.DataFrame], prompts: list[str], n_images: int, path) -> None:
    """Rows: runs (base first); columns: the same prompts and seeds."""
    runs = list(samples)
    fig, axes = plt.subplots(
        len(runs), len(prompts), figsize=(1.2 * n_images * len(prompts), 1.4 * len(runs)), squeeze=False
    )
    for i, run in enumerate(runs):
        table = samples[run]
        for j, prompt in enumerate(prompts):
            rows = table[table.prompt == prompt].sort_values("index").head(n_images)
            images = torch.stack([png_tensor(b) for b in rows.image])  # (N, 3, H, W)
            strip = torch.cat(list(images), dim=2).permute(1, 2, 0).numpy()
            ax = axes[i][j]
            ax.imshow(strip, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(prompt, fontsize=9)
            if j == 0:
                ax.set_ylabel(run, fontsize=8, rotation=0, ha="right", va="center")
    _save(fig, path)


def plot_efficiency(rewards: dict[tuple, pd.Series], efficiency: pd.DataFrame, path) -> None:
    """A panel per (backbone, reward): each method's smoothed training reward per iteration (mean over seeds),
    Flow-GRPO's final one (dotted, mean over seeds) and where each method first reaches it (dashed: mean over
    the seeds that do)."""
    pairs = list(dict.fromkeys(run[:2] for run in rewards))
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(5 * max(len(pairs), 1), 3.8), squeeze=False)
    for ax, (backbone, reward) in zip(axes[0], pairs):
        rows = efficiency[(efficiency.backbone == backbone) & (efficiency.reward == reward)]
        for method in dict.fromkeys(run[2] for run in rewards if run[:2] == (backbone, reward)):
            seeds = [s for run, s in rewards.items() if run[:3] == (backbone, reward, method)]
            mean = pd.concat(seeds, axis=1).mean(axis=1)
            line, = ax.plot(mean.index, mean.values, label=method)
            reached = rows[rows.method == method].reached.dropna()
            if len(reached):
                ax.axvline(reached.mean(), color=line.get_color(), ls="--", lw=0.8)
        ax.axhline(rows.target.mean(), color="grey", ls=":", lw=1, label="Flow-GRPO final")
        ax.set(title=f"{backbone} / {reward}", xlabel="iteration", ylabel="training reward (smoothed)")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_replicator(panels: dict[str, tuple[np.ndarray, np.ndarray]], path) -> None:
    """A panel per title: each mode's measured (T, K) share per iteration (solid) and the replicator equation's
    (T, K) prediction (dashed)."""
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, (title, (measured, predicted)) in zip(axes[0], panels.items()):
        for k in range(measured.shape[1]):
            line, = ax.plot(measured[:, k], lw=0.8)
            ax.plot(predicted[:, k], "--", color=line.get_color(), lw=1.2)
        ax.set(ylim=(0, 1), xlabel="iteration", ylabel="mode share")
        ax.set_title(title, fontsize=8)
    _save(fig, path)


def plot_budget(summary: pd.DataFrame, path) -> None:
    """A panel per (backbone, reward): each method's share of diversity decided by the first j noise draws
    (analyses.budget_summary: the share and its bootstrap standard error), the base model's in black."""
    pairs = [p for p in dict.fromkeys(zip(summary.backbone, summary.reward)) if p[1] != "base"]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(5 * max(len(pairs), 1), 3.8), squeeze=False)
    for ax, (backbone, reward) in zip(axes[0], pairs):
        rows = summary[(summary.backbone == backbone) & summary.reward.isin([reward, "base"])]
        for method, table in rows.groupby("method", sort=False):
            ax.errorbar(table.j, table["mean"], yerr=table["std"].fillna(0), fmt="-o", ms=3, capsize=2,
                        label=method, color="black" if method == "base" else None)
        # cut: a collapsed run has almost no diversity to share out, and its shares are noise far outside [0, 1]
        ax.set(title=f"{backbone} / {reward}", xlabel="noise draws shared (0: none; 1: the initial noise)",
               ylabel="share of diversity decided", ylim=(-0.5, 1.2))
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_sweep(table: pd.DataFrame, parameter: str, path) -> None:
    """Diversity and the run's own reward against one swept parameter (stages.sweeps.sweep_table's rows of it), a
    line per (reward, caption split) with the standard deviation over seeds; for K also its training seconds per
    iteration, the compute it costs."""
    measures = ["diversity", "own_reward"] + (["seconds_per_iteration"] if parameter == "sa_steps" else [])
    fig, axes = plt.subplots(1, len(measures), figsize=(4.5 * len(measures), 3.6), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        timed = measure == "seconds_per_iteration"
        for (backbone, reward, split), rows in table.sort_values("value").groupby(["backbone", "reward", "split"]):
            if timed and split != "train":
                continue  # a run's time, the same row under either split
            ax.errorbar(rows.value, rows[measure], yerr=rows[f"{measure}_std"].fillna(0), fmt="-o" if split == "train"
                        else "--s", ms=3, capsize=2, label=f"{backbone}/{reward}" + ("" if timed else f" ({split})"))
        ax.set(xlabel="K (SA-Reg steps)" if parameter == "sa_steps" else parameter, ylabel=measure.replace("_", " "))
        if parameter == "sa_steps":
            ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:  # a parameter swept over no values draws empty axes
            ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig, path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

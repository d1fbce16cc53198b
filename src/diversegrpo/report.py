"""The paper's outputs: Table 1 (Markdown + LaTeX), a flat summary for DVC metrics, reward-diversity
Pareto curves over training checkpoints, training curves and image grids on shared prompts and seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .io import atomic_path, png_tensor  # noqa: E402

# (metric, header, higher is better); rewards are added per table
COLUMNS = [
    ("diversity", "Diversity↑", True),
    ("ssim_diversity", "SSIM-div↑", True),
    ("fd_base", "FD↓", False),
    ("irs_base", "IRS↑", True),
    ("mode_entropy", "Mode H↑", True),
    ("mode_coverage", "Coverage↑", True),
    ("valid_share", "Valid↑", True),
]


def overall_table(metrics: pd.DataFrame, scope: str = "overall") -> pd.DataFrame:
    """One row per (backbone, reward, method) with one column per overall metric (scope "overall"), or
    per standard error of one (scope "overall_se")."""
    overall = metrics[metrics.scope == scope]
    return overall.pivot_table(index=["backbone", "reward", "method"], columns="metric", values="value").reset_index()


def paper_table(table: pd.DataFrame, rewards: list[str]) -> pd.DataFrame:
    """Table 1: per trained reward, base then each method; quality columns for every reward."""
    blocks = []
    for (backbone, reward), _ in table[table.method != "base"].groupby(["backbone", "reward"], sort=False):
        base = table[(table.backbone == backbone) & (table.method == "base")].assign(reward=reward)
        runs = table[(table.backbone == backbone) & (table.reward == reward)]
        blocks.append(pd.concat([base, runs]))
    if not blocks:  # e.g. standard errors of a base run re-evaluated before the trained runs were
        return table.iloc[0:0]
    out = pd.concat(blocks, ignore_index=True)
    columns = [c for c, _, _ in COLUMNS if c in out] + [f"reward_{r}" for r in rewards if f"reward_{r}" in out]
    return out[["backbone", "reward", "method", *columns]]


def to_markdown(table: pd.DataFrame, errors: pd.DataFrame | None = None) -> str:
    """Table 1 in Markdown; with `errors` (the same table of standard errors) a cell reads "value ± error"."""
    headers = {c: h for c, h, _ in COLUMNS} | {
        c: c.removeprefix("reward_") + "↑" for c in table if c.startswith("reward_")
    }
    cols = list(table.columns)
    lines = ["| " + " | ".join(headers.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(table, errors, "±")]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, errors: pd.DataFrame | None = None) -> str:
    headers = {c: h.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$") for c, h, _ in COLUMNS}
    cols = list(table.columns)
    head = " & ".join(headers.get(c, c.replace("_", r"\_")) for c in cols)
    body = [" & ".join(c.replace("_", r"\_") for c in cells) + r" \\" for cells in _cells(table, errors, r"$\pm$")]
    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(cols) - 3) + "}", r"\toprule", head + r" \\", r"\midrule",
             *body, r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _cells(table: pd.DataFrame, errors: pd.DataFrame | None, pm: str) -> list[list[str]]:
    """Formatted rows; a metric with a standard error in `errors` (matched by backbone, reward, method)
    gets it appended."""
    keys = ["backbone", "reward", "method"]
    lookup = {} if errors is None else errors.set_index(keys).to_dict("index")
    rows = []
    for row in table.to_dict("records"):
        error = lookup.get(tuple(row[k] for k in keys), {})
        rows.append([_fmt(v, error.get(c), pm) for c, v in row.items()])
    return rows


def _fmt(v, error: float | None = None, pm: str = "±") -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.4f} {pm} {error:.4f}" if error is not None and pd.notna(error) else f"{v:.4f}"


def summary(table: pd.DataFrame) -> dict:
    """Flat {backbone/reward/method/metric: value} for `dvc metrics show`."""
    out = {}
    for row in table.to_dict("records"):
        key = f"{row['backbone']}/{row['reward']}/{row['method']}"
        out.update(
            {
                f"{key}/{k}": round(float(v), 6)
                for k, v in row.items()
                if k not in ("backbone", "reward", "method") and pd.notna(v)
            }
        )
    return out


def pareto_data(curves: dict[tuple[str, str, str], pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for (backbone, reward, method), curve in curves.items():
        for r in curve.to_dict("records"):
            rows.append(
                {
                    "run": f"{backbone}/{reward}/{method}",
                    "backbone": backbone,
                    "reward": reward,
                    "method": method,
                    "iteration": int(r["iteration"]),
                    "diversity": r["diversity"],
                    "reward_value": r["reward_reward"],
                }
            )
    return pd.DataFrame(rows)


def plot_pareto(data: pd.DataFrame, final: pd.DataFrame, path) -> None:
    """Reward vs diversity: each method's path over training checkpoints (curve.parquet, held-out
    prompts), and stars for the final evaluation of the sample stage (base included)."""
    pairs = list(data.groupby(["backbone", "reward"]).groups)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (backbone, reward) in zip(axes[0], pairs):
        colours = {}
        for method, curve in data[(data.backbone == backbone) & (data.reward == reward)].groupby("method"):
            curve = curve.sort_values("iteration")
            (line,) = ax.plot(curve.diversity, curve.reward_value, "-o", ms=3, label=f"{method} (training)")
            colours[method] = line.get_color()
            ax.annotate(
                str(curve.iteration.iloc[-1]), (curve.diversity.iloc[-1], curve.reward_value.iloc[-1]), fontsize=7
            )
        rows = final[(final.backbone == backbone) & (final.reward == reward)]
        for row in rows.itertuples(index=False):
            value = getattr(row, f"reward_{reward}", None)
            if value is not None:
                ax.scatter(row.diversity, value, marker="*", s=120, color=colours.get(row.method, "black"), zorder=3)
                ax.annotate(
                    f"{row.method} (final)",
                    (row.diversity, value),
                    fontsize=7,
                    xytext=(4, -8),
                    textcoords="offset points",
                )
        ax.set(title=f"{backbone} / {reward}", xlabel="diversity (mean pairwise distance)", ylabel=f"{reward} reward")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_curves(logs: dict[tuple[str, str, str], pd.DataFrame], path) -> None:
    metrics = ["reward_mean", "diversity", "clusters", "regularizer"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5))
    for (_backbone, reward, method), log in logs.items():
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


def _save(fig, path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

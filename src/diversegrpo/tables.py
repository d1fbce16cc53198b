"""The paper's tables, aggregated over the replicate seeds (runs.seeds): Table 1 per caption split (Markdown +
LaTeX: the mean over seeds ± the spread, and DiverseGRPO / Flow-GRPO ratios per seed) and a summary for DVC
metrics. The figures are figures.py's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import read_parquet
from .methods import BASELINE, DIVERSE

# (metric, header, higher is better); rewards are added per table
COLUMNS = [
    ("diversity", "Diversity↑", True),
    ("ssim_diversity", "SSIM-div↑", True),
    ("fd_base", "FD↓", False),
    ("irs_base", "IRS↑", True),
    ("mode_entropy", "Mode H↑", True),
    ("mode_coverage", "Coverage↑", True),
    ("valid_share", "Valid↑", True),
    ("off_mode_share", "Off-mode↓", False),  # in none of the world's modes (toy: no object or tint)
]
SPLITS = {"eval": "held-out captions", "train": "training captions"}  # the sample stage's splits, in table order
KEYS = ["split", "backbone", "reward", "method"]  # a row of Table 1 (one per split); per seed, plus "seed"
RATIOS = {"diversity": "diversity", "mode_entropy": "mode entropy", "reward": "reward"}  # reward: the run's own


def read_metrics(files: list[str]) -> pd.DataFrame:
    """The evaluate stage's metrics files, one long table; a base model's file (.../base/seed<s>/) is named for the
    rule that writes it, evaluate_base, in a read error."""
    return pd.concat([read_parquet(f, "metrics", "evaluate_base" if Path(f).parent.parent.name == "base" else
                                   "evaluate") for f in files], ignore_index=True)


def overall_table(metrics: pd.DataFrame, scope: str = "overall") -> pd.DataFrame:
    """One row per (split, backbone, reward, method, seed) with one column per overall metric (scope
    "overall"), or per standard error of one (scope "overall_se")."""
    overall = metrics[metrics.scope == scope]
    index = [k for k in (*KEYS, "seed") if k in overall]
    table = overall.pivot_table(index=index, columns="metric", values="value", sort=False).reset_index()
    table.columns.name = None
    return table


@dataclass
class SeedTables:
    """The evaluate stage's overall metrics, per seed and over seeds (aggregate)."""

    mean: pd.DataFrame  # one row per KEYS: the mean over seeds of each overall metric
    spread: pd.DataFrame  # the same rows: the sample std over seeds, or with one seed its bootstrap standard error
    per_seed: pd.DataFrame  # overall_table: one row per KEYS and seed
    errors: pd.DataFrame  # overall_table(..., "overall_se"): each seed's bootstrap standard errors


def aggregate(metrics: pd.DataFrame) -> SeedTables:
    """The evaluate stage's long metrics (every run, base included, every seed) per seed and over seeds. The spread
    is the sample standard deviation over seeds where a row has two seeds or more, and with one seed that seed's
    bootstrap standard error (a metric without one, e.g. FD: NaN)."""
    per_seed = overall_table(metrics)
    errors = overall_table(metrics, "overall_se")
    columns = [c for c in per_seed if c not in (*KEYS, "seed")]
    groups = per_seed.groupby(KEYS, sort=False)
    mean = groups[columns].mean().reset_index()
    std = groups[columns].std(ddof=1).reset_index()
    counts = groups.size().to_numpy()
    single = errors.set_index(KEYS) if len(errors) else None
    rows = []
    for (key, row), n in zip(std.set_index(KEYS).iterrows(), counts):
        if n < 2:  # one seed: its bootstrap standard errors
            se = single.loc[[key]].iloc[0] if single is not None and key in single.index else pd.Series(dtype=float)
            row = pd.Series({c: se.get(c, float("nan")) for c in columns})
        rows.append(row[columns])
    spread = pd.DataFrame(rows, columns=columns).reset_index(drop=True)
    spread = pd.concat([std[KEYS].reset_index(drop=True), spread.astype(float)], axis=1)
    return SeedTables(mean, spread, per_seed, errors)


def ratios(per_seed: pd.DataFrame, errors: pd.DataFrame | None = None) -> pd.DataFrame:
    """DiverseGRPO / Flow-GRPO per split, backbone, reward and seed, of diversity, mode entropy (toy world)
    and the run's own reward: columns split, backbone, reward, seed and ratio_<RATIOS key> (missing, NaN, where
    Flow-GRPO's value is 0 or missing). With `errors` (overall_table's "overall_se" rows), also ratio_<key>_se: the
    ratio's standard error from the two runs' bootstrap ones (_ratio_error), so that a seed's ratio can be read
    against the noise of its evaluation images. Empty unless both methods are in the run matrix."""
    rows = []
    runs = per_seed.set_index([*KEYS, "seed"])
    ses = errors.set_index([*KEYS, "seed"]) if errors is not None and len(errors) else None
    for (split, backbone, reward, method, seed) in runs.index:
        theirs_key = (split, backbone, reward, BASELINE, seed)
        if method != DIVERSE or theirs_key not in runs.index:
            continue
        mine_key = (split, backbone, reward, method, seed)
        mine, theirs = runs.loc[mine_key], runs.loc[theirs_key]
        row = {"split": split, "backbone": backbone, "reward": reward, "seed": int(seed)}
        for name in RATIOS:
            column = f"reward_{reward}" if name == "reward" else name
            if column in runs:
                row[f"ratio_{name}"] = ratio = _quotient(mine[column], theirs[column])
                if ses is not None and column in ses and mine_key in ses.index and theirs_key in ses.index:
                    row[f"ratio_{name}_se"] = _ratio_error(ratio, ses.loc[mine_key, column], theirs[column],
                                                           ses.loc[theirs_key, column])
        rows.append(row)
    columns = ["split", "backbone", "reward", "seed", *(f"ratio_{n}" for n in RATIOS)]
    errors_found = [f"ratio_{n}_se" for n in RATIOS if any(f"ratio_{n}_se" in r for r in rows)]
    return pd.DataFrame(rows, columns=columns + errors_found)


def _quotient(a, b) -> float | None:
    return float(a / b) if pd.notna(a) and pd.notna(b) and b != 0 else None


def _ratio_error(ratio: float | None, se_a, b, se_b) -> float | None:
    """First-order standard error of the ratio a / b from the standard errors of a and b, treated as independent:
    hypot(se_a, ratio * se_b) / |b|, which is ratio * hypot(se_a / a, se_b / b) where a != 0."""
    if ratio is None or pd.isna(se_a) or pd.isna(se_b):
        return None
    return float(np.hypot(se_a, ratio * se_b) / abs(b))


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


def split_tables(mean: pd.DataFrame, spread: pd.DataFrame, rewards: list[str]) -> dict[str, tuple]:
    """split -> (Table 1 of the means, the same table of spreads), splits in SPLITS order."""
    splits = [s for s in SPLITS if s in set(mean.split)] + [s for s in dict.fromkeys(mean.split) if s not in SPLITS]
    return {s: (paper_table(mean[mean.split == s].drop(columns="split"), rewards),
                paper_table(spread[spread.split == s].drop(columns="split"), rewards)) for s in splits}


def spread_note(seeds: list[int]) -> str:
    if len(seeds) > 1:
        return (f"Mean over the {len(seeds)} seeds {', '.join(map(str, seeds))} ± the sample standard deviation "
                f"over seeds.")
    return f"Seed {seeds[0]}; ± is the bootstrap standard error from resampling each prompt's images."


def split_title(split: str) -> str:
    return f"{split} split ({SPLITS[split]})" if split in SPLITS else f"{split} split"


def table1_markdown(tables: dict[str, tuple], ratio_table: pd.DataFrame, seeds: list[int]) -> str:
    """Table 1 with a section per caption split, each followed by its DiverseGRPO / Flow-GRPO ratios per seed."""
    lines = ["# Table 1", "", spread_note(seeds), ""]
    for split, (table, errors) in tables.items():
        lines += [f"## {split_title(split)}", "", to_markdown(table, errors)]
        mine = ratio_table[ratio_table.split == split]
        if len(mine):
            lines += [f"{_ratio_title()}:", "", _ratios_markdown(mine)]
    return "\n".join(lines)


def adaptive_k_markdown(records: list[dict]) -> str:
    """The K each sa_steps: auto run chose (records: backbone, reward, method, seed and the run config's adaptive_k
    record), as a table to read beside Table 1's fixed-K rows; "" without such runs."""
    if not records:
        return ""
    rows = [f"| {r['backbone']} | {r['reward']} | {r['method']} | {r['seed']} | {r['share']:.2f} | {r['sa_steps']} | "
            f"{r['decided']:.3f} |" for r in records]
    return "\n".join(["", "## Adaptive K (sa_steps: auto)", "",
                      "K: the fewest early steps whose noise, with the initial noise, decides the share asked of the "
                      "base model's diversity budget.", "",
                      "| backbone | reward | method | seed | share asked | K | share decided |",
                      "|---|---|---|---|---|---|---|", *rows])


def _ratio_title() -> str:
    return "DiverseGRPO / Flow-GRPO per seed (± the ratio's standard error, from the two runs' bootstrap ones)"


def _ratio_cells(table: pd.DataFrame, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    names = [n for n in RATIOS if table[f"ratio_{n}"].notna().any()]

    def cell(record: dict, name: str) -> str:
        value = record[f"ratio_{name}"]
        return "—" if pd.isna(value) else _fmt(float(value), record.get(f"ratio_{name}_se"), pm, digits=3)

    rows = [[str(r["backbone"]), str(r["reward"]), str(r["seed"]), *(cell(r, n) for n in names)]
            for r in table.to_dict("records")]
    return ["backbone", "reward", "seed", *(RATIOS[n] for n in names)], rows


def _ratios_markdown(table: pd.DataFrame) -> str:
    header, rows = _ratio_cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows]) + "\n"


def table1_latex(tables: dict[str, tuple], ratio_table: pd.DataFrame, seeds: list[int]) -> str:
    """Table 1 as one booktabs tabular with a block per caption split, then the ratios' tabular."""
    out = [f"% Table 1. {spread_note(seeds)}".replace("±", "+-")]
    first = True
    for split, (table, errors) in tables.items():
        body = to_latex(table, errors).splitlines()
        if first:
            out += body[:4]  # \begin{tabular}, \toprule, the header, \midrule
            first = False
        else:
            out.append(r"\midrule")
        out += [rf"\multicolumn{{{len(table.columns)}}}{{l}}{{\emph{{{split_title(split)}}}}} \\", *body[4:-2]]
    if not first:
        out += [r"\bottomrule", r"\end{tabular}"]
    if len(ratio_table):
        header, _ = _ratio_cells(ratio_table)
        out += ["", f"% {_ratio_title()}".replace("±", "+-"),
                r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 3) + "}", r"\toprule",
                " & ".join(["split", *header]) + r" \\", r"\midrule"]
        for split in tables:
            _, rows = _ratio_cells(ratio_table[ratio_table.split == split], r"$\pm$")
            out += [" & ".join(c.replace("_", r"\_").replace("—", "--") for c in [split, *cells]) + r" \\"
                    for cells in rows]
        out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


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


def _fmt(v, error: float | None = None, pm: str = "±", digits: int = 4) -> str:
    if not isinstance(v, float):
        return str(v)
    v = round(v, digits) + 0.0  # a Frechet distance of -1e-9 (the base model against itself) prints as 0.0000
    return f"{v:.{digits}f} {pm} {error:.{digits}f}" if error is not None and pd.notna(error) else f"{v:.{digits}f}"


def summary(tables: dict[str, tuple], per_seed: pd.DataFrame, ratio_table: pd.DataFrame, seeds: list[int]) -> dict:
    """Machine-readable Table 1 (for `dvc metrics`): {"seeds": [...], split: {backbone: {reward: {method: {metric:
    {"mean", "spread", "per_seed": [one value per seed, in "seeds" order]}}}}}, "ratios": {split: {backbone:
    {reward: [{"seed", "diversity", "mode_entropy", "reward"} per seed, and "<ratio>_se" where known]}}}}. base sits
    under every reward, as in Table 1; a value that does not exist is null; spread as in Table 1 (spread_note)."""
    out: dict = {"seeds": [int(s) for s in seeds]}
    values = per_seed.set_index([*KEYS, "seed"])
    for split, (table, errors) in tables.items():
        lookup = errors.set_index(["backbone", "reward", "method"]).to_dict("index")
        for row in table.to_dict("records"):
            backbone, reward, method = row["backbone"], row["reward"], row["method"]
            own = "" if method == "base" else reward  # the base run's rows carry no reward
            node = out.setdefault(split, {}).setdefault(backbone, {}).setdefault(reward, {}).setdefault(method, {})
            for metric, mean in row.items():
                if metric in ("backbone", "reward", "method") or pd.isna(mean):
                    continue
                node[metric] = {
                    "mean": _number(mean),
                    "spread": _number(lookup.get((backbone, reward, method), {}).get(metric)),
                    "per_seed": [_number(values[metric].get((split, backbone, own, method, s))) for s in seeds],
                }
    for r in ratio_table.to_dict("records"):
        entry = {"seed": int(r["seed"]), **{n: _number(r[f"ratio_{n}"]) for n in RATIOS},
                 **{f"{n}_se": _number(r[f"ratio_{n}_se"]) for n in RATIOS if f"ratio_{n}_se" in r}}
        out.setdefault("ratios", {}).setdefault(r["split"], {}).setdefault(r["backbone"], {}).setdefault(
            r["reward"], []).append(entry)
    return out


def _number(v) -> float | None:
    return None if v is None or pd.isna(v) else round(float(v), 6)

"""The paper's claims, checked per caption split, backbone, reward and seed for every DiverseGRPO variant (a trained
method with a creative reward): Flow-GRPO gains quality over the base model and collapses onto few modes; the
variant keeps Flow-GRPO's quality and valid share (or more) with more diversity, no point of the Pareto plot
dominates it, and SA-Reg (the regulariser without the bonus) sits in between. The thresholds are the project's
reading of the paper's "comparable quality, higher diversity", fixed here so that every run is held to the same
ones."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .methods import BASELINE, SA_REG
from .tables import KEYS, SPLITS, split_title

HEADROOM_SE = {"train": 3.0}  # Flow-GRPO's reward gain over base, in standard errors: at least this on the training
#                               captions (GRPO's own prompts); on any other split (held-out) above 0
COLLAPSE = 0.6  # Flow-GRPO's mode entropy at most this times the base model's
DIVERSITY = 1.3  # the variant's diversity at least this times Flow-GRPO's
QUALITY = 0.98  # its reward at least this times Flow-GRPO's
VALID_GAP = 0.05  # its valid share at most this below Flow-GRPO's (above it is no broken image: it passes)
# name -> the header of its column in the Markdown table
CLAIMS = {
    "headroom": "Flow-GRPO gain (SE)",
    "collapse": "Flow-GRPO H / base",
    "diversity": "diversity / Flow-GRPO",
    "quality": "reward / Flow-GRPO",
    "valid": "valid - Flow-GRPO",
    "undominated": "undominated",
    "sa_reg_between": "SA-Reg between",
}


def check(per_seed: pd.DataFrame, errors: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """One row per (split, backbone, reward, seed, variant) where the variant, Flow-GRPO and the base model were all
    evaluated: columns split, backbone, reward, method, seed, then per claim its value (NaN where a metric is
    missing, e.g. mode entropy without a labeller) and pass_<claim> (True, False, or None where not checked), and
    `all`: every checked claim passes. per_seed: tables.overall_table rows; errors: its "overall_se" rows."""
    runs = per_seed.set_index([*KEYS, "seed"])
    ses = errors.set_index([*KEYS, "seed"]) if len(errors) else pd.DataFrame()
    rows = []
    for split, backbone, reward, method, seed in runs.index:
        base_key, fg_key = (split, backbone, "", "base", seed), (split, backbone, reward, BASELINE, seed)
        if method not in variants or base_key not in runs.index or fg_key not in runs.index:
            continue
        mine, fg, base = runs.loc[(split, backbone, reward, method, seed)], runs.loc[fg_key], runs.loc[base_key]
        column = f"reward_{reward}"
        sa_key = (split, backbone, reward, SA_REG, seed)
        values = {
            "headroom": _gain_in_se(fg[column] - base[column], _se(ses, fg_key, column), _se(ses, base_key, column)),
            "collapse": _quotient(fg.get("mode_entropy"), base.get("mode_entropy")),
            "diversity": _quotient(mine["diversity"], fg["diversity"]),
            "quality": _quotient(mine[column], fg[column]),
            "valid": mine.get("valid_share", np.nan) - fg.get("valid_share", np.nan),
            "undominated": not (_dominates(base, mine, column) or _dominates(fg, mine, column)),
            "sa_reg_between": (fg["diversity"] < runs.loc[sa_key, "diversity"] < mine["diversity"])
            if sa_key in runs.index else None,
        }
        passed = _passes(values, HEADROOM_SE.get(split, 0.0))
        checked = [p for p in passed.values() if p is not None]
        rows.append({"split": split, "backbone": backbone, "reward": reward, "method": method, "seed": int(seed),
                     **values, **{f"pass_{k}": p for k, p in passed.items()}, "all": bool(checked) and all(checked)})
    columns = ["split", "backbone", "reward", "method", "seed", *CLAIMS, *(f"pass_{k}" for k in CLAIMS), "all"]
    return pd.DataFrame(rows, columns=columns)


def _passes(values: dict, headroom_se: float) -> dict:
    def at_least(value, threshold, strict=False):
        return None if value is None or pd.isna(value) else bool(value > threshold if strict else value >= threshold)

    return {
        "headroom": at_least(values["headroom"], headroom_se, strict=headroom_se == 0),
        "collapse": None if pd.isna(values["collapse"]) else bool(values["collapse"] <= COLLAPSE),
        "diversity": at_least(values["diversity"], DIVERSITY),
        "quality": at_least(values["quality"], QUALITY),
        "valid": None if pd.isna(values["valid"]) else bool(values["valid"] >= -VALID_GAP),
        "undominated": values["undominated"],
        "sa_reg_between": None if values["sa_reg_between"] is None else bool(values["sa_reg_between"]),
    }


def _se(ses: pd.DataFrame, key: tuple, column: str) -> float:
    return float(ses.loc[key, column]) if column in ses and key in ses.index else np.nan


def _gain_in_se(gain: float, se_a: float, se_b: float) -> float:
    """A difference in units of its standard error, the two runs' bootstrap ones taken as independent."""
    se = np.hypot(se_a, se_b)
    return float(gain / se) if se > 0 else np.nan


def _quotient(a, b) -> float:
    return float(a / b) if a is not None and b is not None and pd.notna(a) and pd.notna(b) and b != 0 else np.nan


def _dominates(other: pd.Series, mine: pd.Series, column: str) -> bool:
    """Pareto dominance on (diversity, reward): at least as good on both, better on one."""
    at_least = other["diversity"] >= mine["diversity"] and other[column] >= mine[column]
    return bool(at_least and (other["diversity"] > mine["diversity"] or other[column] > mine[column]))


def markdown(table: pd.DataFrame) -> str:
    """A section per caption split, a row per backbone, reward, variant and seed, each value marked ✓ or ✗, then
    how many cells (split x reward x seed) each variant meets every claim in; "" without variants."""
    if table.empty:
        return ""
    lines = ["", "## The paper's claims, seed by seed", "",
             f"Flow-GRPO gains reward over base (at least {HEADROOM_SE['train']:g} standard errors on the training "
             f"captions, above base on the others) and collapses (mode entropy at most {COLLAPSE:g}x base's); the "
             f"variant's diversity is at least {DIVERSITY:g}x Flow-GRPO's and its reward at least {QUALITY:g}x, its "
             f"valid share at most {VALID_GAP:g} below Flow-GRPO's, neither base nor Flow-GRPO dominates it on "
             "(diversity, reward), and SA-Reg's diversity lies between Flow-GRPO's and its. — : not measured in "
             "this world.", ""]
    header = ["backbone", "reward", "method", "seed", *CLAIMS.values(), "all"]
    for split in [s for s in SPLITS if s in set(table.split)] + sorted(set(table.split) - set(SPLITS)):
        rows = table[table.split == split].sort_values(["backbone", "reward", "method", "seed"], kind="stable")
        lines += [f"### {split_title(split)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows.to_dict("records"):
            cells = [str(r["backbone"]), str(r["reward"]), str(r["method"]), str(r["seed"]),
                     *(_cell(name, r[name], r[f"pass_{name}"]) for name in CLAIMS), _mark(r["all"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for backbone, methods in summary(table).items():
        for method, counts in methods.items():
            lines.append(f"{backbone} {method}: every claim in {counts['all']} of {counts['cells']} cells; "
                         + ", ".join(f"{name} {counts[name]}" for name in CLAIMS) + ".")
    return "\n".join(lines) + "\n"


def _cell(name: str, value, passed) -> str:
    if passed is None:
        return "—"
    if name in ("undominated", "sa_reg_between"):
        return _mark(passed)
    text = {"valid": f"{value:+.3f}", "headroom": f"{value:.1f}", "diversity": f"{value:.2f}"}.get(name, f"{value:.3f}")
    return f"{text} {_mark(passed)}"


def _mark(passed: bool) -> str:
    return "✓" if passed else "✗"


def summary(table: pd.DataFrame) -> dict:
    """For summary.json: per backbone and variant, the cells checked, those that meet every claim, and each claim's
    count of passes."""
    out: dict = {}
    for (backbone, method), rows in table.groupby(["backbone", "method"], sort=False):
        out.setdefault(backbone, {})[method] = {
            "cells": len(rows), "all": int(rows["all"].sum()),
            **{name: int((rows[f"pass_{name}"] == True).sum()) for name in CLAIMS},  # noqa: E712 (None stays out)
        }
    return out

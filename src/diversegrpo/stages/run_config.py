"""The run_config stage: a run's resolved settings plus its train and evaluation prompts, as JSON. An adaptive K
(sa_steps: auto) is chosen here, from the base model's diversity budget (the budget_base job of the run's seed)."""

from __future__ import annotations

import numpy as np

from ..config import trained_steps
from ..dynamics import diversity_budget, steps_deciding
from ..io import read_parquet, write_json


def write_run_config(spec: dict, train_captions: str, eval_captions: str, out: str, budget: str | None = None) -> None:
    spec = dict(spec)
    n_eval = spec.pop("eval_prompt_count")
    spec["train_prompts"] = read_parquet(train_captions, "caption split", "captions").prompt.tolist()
    spec["eval_prompts"] = read_parquet(eval_captions, "caption split", "captions").prompt.tolist()[:n_eval]
    if spec["train"]["prompts_per_iteration"] > len(spec["train_prompts"]):
        raise ValueError(
            f"train.prompts_per_iteration={spec['train']['prompts_per_iteration']} exceeds the "
            f"{len(spec['train_prompts'])} training prompts"
        )
    if "adaptive_k" in spec:
        if budget is None:
            raise ValueError("sa_steps: auto needs the base model's diversity budget (the budget_base job's Parquet)")
        spec["method"], spec["adaptive_k"] = adaptive_k(spec["method"], spec["adaptive_k"]["share"], spec["train"],
                                                        read_parquet(budget, "diversity budget", "budget_base"))
    write_json(spec, out)


def adaptive_k(method: dict, share: float, train: dict, budget) -> tuple[dict, dict]:
    """The method with the K chosen from a budget stage's table (rows: prompt, j, diversity), and the record of the
    choice: the share asked for, K, the share its steps decide, and the budget by j. The budget is the analyses'
    (stages.analyses.budget_summary): of the mean diversity over the captions, 1 - mean D(j) / mean D(0)."""
    by_j = diversity_budget(budget.groupby("j").diversity.mean().sort_index().to_numpy())  # (J,) = (T + 2,)
    if np.isnan(by_j).any():
        raise ValueError("sa_steps: auto: the base model's samples in the budget table have no diversity (D(0) = 0), "
                         "so no share of it can choose K; set sa_steps to a number")
    k = steps_deciding(by_j, share, trained_steps(train["train_steps"], train["timestep_fraction"]))  # <= T
    record = {"share": share, "sa_steps": k, "decided": float(by_j[k + 1]),
              "budget": [round(float(b), 4) for b in by_j]}
    return {**method, "sa_steps": k}, record

"""The run_config stage: a run's resolved settings plus its train and evaluation prompts, as JSON."""

from __future__ import annotations

from ..io import read_parquet, write_json


def write_run_config(spec: dict, train_captions: str, eval_captions: str, out: str) -> None:
    spec = dict(spec)
    n_eval = spec.pop("eval_prompt_count")
    spec["train_prompts"] = read_parquet(train_captions, "caption split", "captions").prompt.tolist()
    spec["eval_prompts"] = read_parquet(eval_captions, "caption split", "captions").prompt.tolist()[:n_eval]
    if spec["train"]["prompts_per_iteration"] > len(spec["train_prompts"]):
        raise ValueError(
            f"train.prompts_per_iteration={spec['train']['prompts_per_iteration']} exceeds the "
            f"{len(spec['train_prompts'])} training prompts"
        )
    write_json(spec, out)

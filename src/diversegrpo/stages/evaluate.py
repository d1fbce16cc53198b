"""The evaluate stage: one run's samples against the base run's -> a long table of metrics per caption
split (train / eval), per prompt and overall (diversity, SSIM diversity, rewards, Frechet distance and
IRS to base, and in a world with ground truth its valid share, mode coverage and mode entropy, and the Frechet
distance to a synthetic world's true images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import metrics
from ..evaluation import bootstrap_standard_errors, per_prompt
from ..io import png_tensor, read_parquet, write_parquet
from ..registry import build_features, build_world
from ..worlds import World


def load_images(table: pd.DataFrame) -> torch.Tensor:
    return torch.stack([png_tensor(b) for b in table.image])


def evaluate_stage(
    samples: str, base_samples: str, features_spec: dict, world: str | None, labels: dict, out: str,
    torch_threads: int | None = None,
) -> None:
    """Every metric per caption split of the samples (their `split` column: each row of the output carries
    it), each against the base run's images of the same split. `world`: the captions' world (registry.WORLDS),
    None for a prompt file. `torch_threads`: intra-op threads (None: torch's default); Snakemake runs one
    evaluate job per core."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    embed, truth = build_features(features_spec), build_world(world)
    run = read_parquet(samples, "samples", "sample")
    images = load_images(run)
    emb = embed(images)
    if Path(base_samples).resolve() == Path(samples).resolve():  # the base run is its own reference
        base, base_emb = run, emb
    else:
        base = read_parquet(base_samples, "base samples", "sample_base")
        base_emb = embed(load_images(base))
    long = []
    for split in dict.fromkeys(run.split):
        mine, theirs = (run.split == split).to_numpy(), (base.split == split).to_numpy()
        mine_t, theirs_t = torch.from_numpy(mine.copy()), torch.from_numpy(theirs.copy())
        long += _split_metrics(run[mine].reset_index(drop=True), images[mine_t], emb[mine_t],
                               base[theirs].reset_index(drop=True), base_emb[theirs_t], embed, truth,
                               {**labels, "split": split})
    write_parquet(pd.DataFrame(long), out)


def _split_metrics(run: pd.DataFrame, images: torch.Tensor, emb: torch.Tensor, base: pd.DataFrame,
                   base_emb: torch.Tensor, embed, world: World | None, labels: dict) -> list[dict]:
    """The long rows of one caption split: per prompt, overall, and overall_se (bootstrap standard errors)."""
    rewards = {
        c.removeprefix("reward_"): torch.tensor(run[c].to_numpy()) for c in run.columns if c.startswith("reward_")
    }
    prompts = run.prompt.tolist()
    modes = world.label(images, prompts) if world else None
    table = per_prompt(images, prompts, emb, rewards, modes)
    overall = table.drop(columns=["prompt", "n_images"]).mean().to_dict()
    errors = bootstrap_standard_errors(prompts, emb, rewards, modes)
    overall["fd_base"] = metrics.frechet_distance(emb.numpy(), base_emb.numpy())
    overall["irs_base"] = _irs_per_prompt(run, base, emb.numpy(), base_emb.numpy())
    if world and world.synthetic:
        truth = world.sample_images(base.prompt.tolist(), np.random.default_rng(0))
        overall["fd_world"] = metrics.frechet_distance(emb.numpy(), embed(truth).numpy())
    long = [
        {**labels, "scope": "prompt", "prompt": row["prompt"], "metric": k, "value": float(v)}
        for row in table.to_dict("records") for k, v in row.items() if k not in ("prompt",)
    ]
    long += [{**labels, "scope": "overall", "prompt": "", "metric": k, "value": float(v)} for k, v in overall.items()]
    long += [{**labels, "scope": "overall_se", "prompt": "", "metric": k, "value": v} for k, v in errors.items()]
    return long


def _irs_per_prompt(run: pd.DataFrame, base: pd.DataFrame, emb: np.ndarray, base_emb: np.ndarray) -> float:
    """IRS within each prompt (a generated image may only retrieve its own prompt's references)."""
    scores = []
    for pid in run.prompt_id.unique():
        g, r = (run.prompt_id == pid).to_numpy(), (base.prompt_id == pid).to_numpy()
        scores.append(metrics.image_retrieval_score(emb[g], base_emb[r]))
    return float(np.mean(scores))

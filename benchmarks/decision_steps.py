"""Which rollout steps decide whether an image is veiled or invalid, and which its mode? On a finished toy run.

SA-Reg pins the first K steps' transition means to the base model's, to keep the modes those steps choose. This
draws, for every training caption, trajectories of the rollout SDE whose branches share the first j of the T + 1
noise draws (draw 0 the initial noise, draw i step i's; `sampling.branched_samples`) and prints, for each j, the
share of each choice that the shared draws decide: 1 - (mean impurity across branches at j) / (the same at j = 0),
the impurity being Gini's (printed at j = 0 too: where it is near 0, the model has all but made the choice for every
draw, and the shares are noise). Four choices: veiled (the background brighter than every tint), invalid (by the
labeller of the world the backbone learnt: a hazy image, or in the dim world a dim shape), off-mode (the labeller
finds no mode) and the mode itself (no mode counting as one). With K = 2, the constrained steps' noise is draws 1
and 2, so j = 3 is what the initial noise and those two steps decide.

    python benchmarks/decision_steps.py [--results results] [--run colour/diverse_grpo/seed0]
                                        [--trajectories 8] [--branches 8]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch

from diversegrpo import config as cfg
from diversegrpo.registry import build_backbone, build_world
from diversegrpo.sampling import branched_samples
from diversegrpo.worlds import toy

# Between the brightest tint's mean (0.23) and the faintest veil's over the darkest tint (0.37).
VEILED_BRIGHTNESS = 0.3


def gini(labels: np.ndarray) -> np.ndarray:
    """(..., levels) Gini impurity of the labels along the last axis (the branches) of (..., levels, branches)."""
    values = np.unique(labels)
    shares = np.stack([(labels == v).mean(axis=-1) for v in values])  # (V, ..., levels)
    return 1 - (shares**2).sum(axis=0)


def decided_share(labels: np.ndarray) -> np.ndarray:
    """(levels,) share of a choice decided by the first j shared draws, from (trajectories, levels, branches)
    labels: 1 - mean impurity at j / mean impurity at j = 0."""
    impurity = gini(labels).mean(axis=0)  # (levels,)
    return 1 - impurity / impurity[0]


def choices(images: torch.Tensor, prompt: str, world) -> dict[str, np.ndarray]:
    """{choice: (levels, branches) labels} of (levels, branches, 3, H, W) branched images of one prompt."""
    levels, branches = images.shape[:2]
    flat = images.flatten(0, 1)
    labels = world.label(flat, [prompt] * len(flat))
    mode = labels.mode.reshape(levels, branches)
    veiled = (toy.background(flat).mean(dim=1) > VEILED_BRIGHTNESS).numpy().reshape(levels, branches)
    return {"veiled": veiled, "invalid": ~labels.valid.reshape(levels, branches), "off_mode": mode < 0, "mode": mode}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="a finished workflow's results directory")
    ap.add_argument("--run", default=None, help="reward/method/seedN of a trained run (default: the base model)")
    ap.add_argument("--trajectories", type=int, default=8, help="shared trajectories per training caption")
    ap.add_argument("--branches", type=int, default=8, help="branches per trajectory and shared prefix")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    config = cfg.defaults()
    spec = {**config["backbones"]["toy"], "path": f"{args.results}/backbones/toy"}
    rollout, backbone = cfg.rollout_settings(spec), build_backbone(spec)
    world = build_world(backbone.config.world)  # the one it learnt, not the default config's
    if args.run:
        backbone.load_trained_lora(spec["lora"], f"{args.results}/runs/toy/{args.run}/lora")
    prompts = pd.read_parquet(f"{args.results}/captions/train.parquet").prompt.tolist()
    generator = torch.Generator().manual_seed(args.seed)
    labels: dict[str, list[np.ndarray]] = {"veiled": [], "invalid": [], "off_mode": [], "mode": []}
    for prompt in prompts:
        for _ in range(args.trajectories):
            images = branched_samples(backbone, prompt, args.branches, rollout["train_steps"],
                                      rollout["guidance_scale"], rollout["noise_level"], generator,
                                      rollout["sde_type"])
            for name, value in choices(images, prompt, world).items():
                labels[name].append(value)
    result = {"model": args.run or "base", "world": world.name}
    for name, value in labels.items():
        stacked = np.stack(value)  # (trajectories, levels, branches)
        impurity = float(gini(stacked[:, 0]).mean())
        # A choice no draw varies (no veil in the dim world) has no share to decide: null.
        result[name] = np.round(decided_share(stacked), 3).tolist() if impurity > 0 else None
        result[f"{name}_impurity_at_0"] = round(impurity, 4)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

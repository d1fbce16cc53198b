"""How much of DiverseGRPO's reward gap to Flow-GRPO is the taste it forgoes by keeping the modes? On a finished
toy run's evaluation images.

Each toy reward is (1 - taste) Q + taste P: the quality Q and a palette P that pays one background tint (1 on it,
0.24-0.35 on the other tints). A model collapsed onto the preferred tint earns the whole taste; one that keeps the
tints earns a share of it, at the same quality. This scores every evaluation image with the run's reward and with
the same reward at taste 0, and prints, per reward, replicate seed and caption split: the method's reward over the
baseline's (`ratio`), the gap's two parts as shares of the baseline's reward (`taste_gap`, `quality_gap`; they sum
to 1 - ratio), the quality gap in standard errors of the two mean qualities (`quality_gap_in_se`, each image an
independent draw), and `ratio_at_equal_quality`, the ratio the method would reach with the baseline's quality and
its own spread of tints.

    python benchmarks/taste_cost.py [--results results] [--method diverse_grpo] [--baseline flow_grpo]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from diversegrpo.registry import build_reward
from diversegrpo.stages.evaluate import load_images


def reward_parts(spec: dict, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """{"quality": (1 - taste) Q, "taste": taste P}, each (B,), of (B, 3, H, W) images under a toy reward spec."""
    reward, plain = build_reward(spec), build_reward({**spec, "taste": 0.0})
    quality = (1 - reward.taste) * plain(images, prompts)  # (B,)
    return {"quality": quality, "taste": reward(images, prompts) - quality}


def compare(baseline: dict[str, torch.Tensor], method: dict[str, torch.Tensor]) -> dict[str, float]:
    """The method's reward against the baseline's, from each one's per-image `reward_parts`."""
    mean = {name: {part: float(values.mean()) for part, values in parts.items()}
            for name, parts in (("baseline", baseline), ("method", method))}
    base_reward = mean["baseline"]["quality"] + mean["baseline"]["taste"]
    method_reward = mean["method"]["quality"] + mean["method"]["taste"]
    se = math.hypot(*(float(p["quality"].std() / math.sqrt(len(p["quality"]))) for p in (baseline, method)))
    quality_gap = mean["baseline"]["quality"] - mean["method"]["quality"]
    return {"ratio": method_reward / base_reward,
            "taste_gap": (mean["baseline"]["taste"] - mean["method"]["taste"]) / base_reward,
            "quality_gap": quality_gap / base_reward, "quality_gap_in_se": quality_gap / se,
            "ratio_at_equal_quality": (mean["baseline"]["quality"] + mean["method"]["taste"]) / base_reward}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="a finished workflow's results directory")
    ap.add_argument("--method", default="diverse_grpo")
    ap.add_argument("--baseline", default="flow_grpo")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for reward_dir in sorted(Path(args.results, "samples", "toy").iterdir()):
        for seed_dir in sorted((reward_dir / args.method).glob("seed*")):
            run = Path(args.results, "runs", "toy", reward_dir.name, args.method, seed_dir.name)
            spec = json.loads((run / "config.json").read_text())["reward"]  # the reward the run was trained on
            tables = {name: pd.read_parquet(reward_dir / name / seed_dir.name / "images.parquet")
                      for name in (args.baseline, args.method)}
            for split in sorted(tables[args.method].split.unique()):
                parts = {}
                for name, table in tables.items():
                    rows_of_split = table[table.split == split]
                    parts[name] = reward_parts(spec, load_images(rows_of_split),
                                               rows_of_split.prompt.tolist())
                result = compare(parts[args.baseline], parts[args.method])
                row = {"reward": reward_dir.name, "seed": seed_dir.name, "split": split,
                       **{k: round(v, 4) for k, v in result.items()}}
                print(json.dumps(row))
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()

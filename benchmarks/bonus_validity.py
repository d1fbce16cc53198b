"""Does the creative bonus pay broken images? Measured on a toy backbone's own GRPO rollouts.

DiverseGRPO's bonus sqrt(N / cluster size) pays images in rare clusters. If broken images (the toy
labeller's invalid ones: wrong shape or colour, or a muddled background) formed rare clusters, the bonus
would reward them and a quality gate would be needed. This samples the rollouts a training iteration
samples (config.yaml's rollout settings, the training captions), scores them as the trainer does
(trainer.score: quality, bonus, the mixed reward) and prints, for valid and invalid images, the mean bonus
minus its group's mean, and how many (invalid, valid) pairs of one group the mixed reward ranks the other
way round from the quality alone.

Could a quality gate withhold the bonus from broken images? Per kind of image (valid on the reward's preferred
tint, valid on the others, off-tint: the caption's colour and shape on a background off every tint, which only
the 2 % taste sees; and every other invalid image) it also prints the median quality, the mean centred bonus, and
the share that a median gate (the bonus only at or above the group's median quality) would keep, with the pairs
the gated reward ranks invalid first; and the kind of the invalid image in each pair the bonus turned round.

    python benchmarks/bonus_validity.py [--backbone results/backbones/toy] [--reward colour] [--batches 6]
                                        [--mix raw|standardised] [--beta B] [--run RUN_DIR]

--run scores the rollouts of a trained run (its `lora/` on the backbone) instead of the base model's: where
training ends, which is where a bonus that paid broken images would have kept them.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch

from diversegrpo import config as cfg
from diversegrpo import trainer
from diversegrpo.creative import median_gate as group_median_gate
from diversegrpo.registry import build_backbone, build_features, build_reward
from diversegrpo.sampling import sample_rollout
from diversegrpo.worlds import toy as world


def pair_flips(quality: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor) -> dict:
    """(invalid, valid) pairs of one group: how many the quality ranks invalid first, and how many more or
    fewer the mixed rewards do. (B,) tensors."""
    same = group_ids[:, None] == group_ids[None, :]  # (B, B)
    pairs = same & ~valid[:, None] & valid[None, :]  # row invalid, column valid
    by_quality = pairs & (quality[:, None] > quality[None, :])
    by_reward = pairs & (rewards[:, None] > rewards[None, :])
    return {"pairs": int(pairs.sum()), "invalid_first_by_quality": int(by_quality.sum()),
            "invalid_first_by_reward": int(by_reward.sum())}


def turned_by_kind(quality: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor,
                   kinds: np.ndarray) -> dict:
    """(invalid, valid) pairs of one group that the mixed rewards rank invalid first and the quality does not, by
    the invalid image's kind. (B,) inputs."""
    same = group_ids[:, None] == group_ids[None, :]  # (B, B)
    turned = same & ~valid[:, None] & valid[None, :] & (rewards[:, None] > rewards[None, :])
    turned &= ~(quality[:, None] > quality[None, :])
    per_image = turned.sum(dim=1).numpy()  # (B,) pairs in which image i is the invalid one
    return {f"turned_{kind}": int(per_image[kinds == kind].sum()) for kind in ("off_tint", "broken")}


def centred_bonus_by_validity(bonus: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor) -> dict:
    """Mean of (bonus - its group's mean bonus) over valid and over invalid images."""
    frame = pd.DataFrame({"g": group_ids.numpy(), "E": bonus.numpy(), "valid": valid.numpy()})
    frame["centred"] = frame.E - frame.groupby("g").E.transform("mean")
    means = frame.groupby("valid").centred.mean()
    counts = frame.groupby("valid").size()
    return {"valid_centred_bonus": float(means.get(True, float("nan"))),
            "invalid_centred_bonus": float(means.get(False, float("nan"))),
            "valid_images": int(counts.get(True, 0)), "invalid_images": int(counts.get(False, 0))}


KINDS = ("valid_preferred", "valid_other", "off_tint", "broken")


def image_kinds(labels: world.Labels, preferred: int) -> np.ndarray:
    """(B,) one of KINDS per image; `preferred`: the index of the reward's preferred tint in world.MODES."""
    kinds = np.full(len(labels.mode), "broken", dtype=object)
    kinds[(labels.mode < 0) & labels.colour_ok & labels.shape_ok] = "off_tint"  # an object was found: no muddle of it
    kinds[labels.valid] = "valid_other"
    kinds[labels.valid & (labels.mode == preferred)] = "valid_preferred"
    return kinds


def median_gate(quality: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the image's quality is at least its group's median (the gate of creative.gate: median)."""
    gate = torch.zeros_like(quality, dtype=torch.bool)
    for g in torch.unique(group_ids):
        gate[group_ids == g] = group_median_gate(quality[group_ids == g])
    return gate


def by_kind(quality: torch.Tensor, bonus: torch.Tensor, gate: torch.Tensor, group_ids: torch.Tensor,
            kinds: np.ndarray) -> dict:
    """Per kind: images, median quality, mean centred bonus, and the share the gate keeps. (B,) inputs."""
    frame = pd.DataFrame({"g": group_ids.numpy(), "q": quality.numpy(), "E": bonus.numpy(), "gate": gate.numpy(),
                          "kind": kinds})
    frame["centred"] = frame.E - frame.groupby("g").E.transform("mean")
    stats = frame.groupby("kind").agg(images=("q", "size"), median_quality=("q", "median"),
                                      centred_bonus=("centred", "mean"), median_gate_keeps=("gate", "mean"))
    return {f"{column}_{kind}": (int(row[column]) if column == "images" else float(row[column]))
            for kind, row in stats.reindex([k for k in KINDS if k in stats.index]).iterrows() for column in stats}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="results/backbones/toy", help="a pre-trained toy backbone directory")
    ap.add_argument("--reward", default="colour")
    ap.add_argument("--method", default="diverse_grpo")
    ap.add_argument("--captions", default="results/captions/train.parquet")
    ap.add_argument("--batches", type=int, default=6, help="rollout batches of every training caption")
    ap.add_argument("--mix", choices=["raw", "standardised"], help="the creative mix (default: the method's)")
    ap.add_argument("--beta", type=float, help="the creative weight (default: the method's)")
    ap.add_argument("--run", help="a trained run's directory (results/runs/toy/<reward>/<method>/seedN)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = cfg.defaults()
    spec = cfg.run_spec(config, "toy", args.reward, args.method, args.backbone)
    overrides = {k: v for k, v in (("mix", args.mix), ("beta", args.beta)) if v is not None}
    train, creative = spec["train"], trainer.CreativeSettings(**{**spec["method"]["creative"], **overrides})
    backbone = build_backbone(spec["backbone"], "cpu")
    if args.run:
        backbone.load_trained_lora(spec["backbone"]["lora"], f"{args.run}/lora")
    reward, embedder = build_reward(spec["reward"]), build_features(spec["features"])
    prompts = pd.read_parquet(args.captions).prompt.tolist()
    preferred = world.MODES.index(reward.preferred)
    quality, rewards, bonus, valid, groups, kinds = [], [], [], [], [], []
    for batch in range(args.batches):
        rollout = sample_rollout(backbone, prompts, train["group_size"], train["train_steps"], train["guidance_scale"],
                                 train["noise_level"], torch.Generator().manual_seed(batch), train["sde_type"])
        scores = trainer.score(rollout, reward, embedder, creative, global_std=train["global_std"])
        quality.append(scores.quality)
        rewards.append(scores.rewards)
        bonus.append(scores.bonus)
        labels = world.label(rollout.images, rollout.prompts)
        valid.append(torch.from_numpy(labels.valid))
        kinds.append(image_kinds(labels, preferred))
        groups.append(rollout.group_ids + batch * len(prompts))
    quality, rewards, bonus = torch.cat(quality), torch.cat(rewards), torch.cat(bonus)
    valid, groups, kinds = torch.cat(valid), torch.cat(groups), np.concatenate(kinds)
    gate = median_gate(quality, groups)
    gated_flips = None
    if creative.mix == "raw":  # gated out: E = 1, the least bonus, that of a group in one cluster
        gated = quality + creative.beta * torch.where(gate, bonus, torch.ones_like(bonus))
        gated_flips = pair_flips(quality, gated, valid, groups)["invalid_first_by_reward"]
    result = {"backbone": args.backbone, "run": args.run, "reward": args.reward, "mix": creative.mix,
              "beta": creative.beta, **centred_bonus_by_validity(bonus, valid, groups),
              **pair_flips(quality, rewards, valid, groups), "invalid_first_by_gated_reward": gated_flips,
              **turned_by_kind(quality, rewards, valid, groups, kinds),
              **by_kind(quality, bonus, gate, groups, kinds)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

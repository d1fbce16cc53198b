"""Name -> implementation, resolved lazily so that choosing the toy world never imports the paper
world's heavy dependencies (and the Snakefile never imports torch)."""

from __future__ import annotations

import importlib

BACKBONES = {
    "toy": "diversegrpo.backbones.toy:ToyBackbone",
    "sd3": "diversegrpo.backbones.sd3:SD3Backbone",
    "flux": "diversegrpo.backbones.flux:FluxBackbone",
}
REWARDS = {
    "toy_colour": "diversegrpo.rewards.toy:ColourReward",
    "toy_contrast": "diversegrpo.rewards.toy:ContrastReward",
    "toy_oracle": "diversegrpo.rewards.toy:OracleReward",
    "pickscore": "diversegrpo.rewards.pickscore:PickScore",
    "hpsv3": "diversegrpo.rewards.hpsv3:HPSv3",
    "imagereward": "diversegrpo.rewards.imagereward:ImageReward",
    "clipscore": "diversegrpo.rewards.clipscore:CLIPScore",
    "unifiedreward": "diversegrpo.rewards.unifiedreward:UnifiedReward",
}
FEATURES = {
    "toy": "diversegrpo.features.toy:PooledPixels",
    "dreamsim": "diversegrpo.features.dreamsim:DreamSimEmbedder",
    "inception": "diversegrpo.features.inception:InceptionEmbedder",
}


def resolve(table: dict[str, str], kind: str, what: str):
    if kind not in table:
        raise ValueError(f"unknown {what} kind {kind!r}; known: {sorted(table)}")
    module, name = table[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_reward(spec: dict, device="cpu"):
    """A reward: callable (images (B, 3, H, W) in [0, 1], prompts) -> (B,) float tensor."""
    return resolve(REWARDS, spec["kind"], "reward").from_spec(spec, device=device)


def build_features(spec: dict, device="cpu"):
    """An embedder: callable images (B, 3, H, W) in [0, 1] -> (B, D) float tensor."""
    return resolve(FEATURES, spec["kind"], "features").from_spec(spec, device=device)

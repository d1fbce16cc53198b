"""Name -> implementation, resolved lazily so that choosing the toy world never imports the paper
world's heavy dependencies (and the Snakefile never imports torch).

Another package adds its own (a world, a reward, ...) without an edit here: it declares them as entry
points of the groups in PLUGIN_GROUPS, e.g. in its pyproject.toml

    [project.entry-points."diversegrpo.worlds"]
    dots = "dots_world:DotsWorld"

and once it is installed (or on PYTHONPATH with its .dist-info), `captions.source: dots` names it."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

BACKBONES = {
    "toy": "diversegrpo.backbones.toy:ToyBackbone",
    "sd3": "diversegrpo.backbones.sd3:SD3Backbone",
    "flux": "diversegrpo.backbones.flux:FluxBackbone",
}
# Backbones the pipeline pre-trains itself (the backbone stage), on a synthetic world's true images.
PRETRAINED_BACKBONES = ("toy",)
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
# Caption sets with ground truth (diversegrpo.worlds), named by captions.source; imported without torch.
WORLDS = {
    "toy": "diversegrpo.worlds.toy:ToyWorld",
    "toy_dim": "diversegrpo.worlds.toy:ToyDimWorld",
}
FEATURES = {
    "toy": "diversegrpo.features.toy:PooledPixels",
    "dreamsim": "diversegrpo.features.dreamsim:DreamSimEmbedder",
    "inception": "diversegrpo.features.inception:InceptionEmbedder",
}


PLUGIN_GROUPS = {"diversegrpo.backbones": BACKBONES, "diversegrpo.rewards": REWARDS,
                 "diversegrpo.features": FEATURES, "diversegrpo.worlds": WORLDS}


def _add_plugins(groups: dict[str, dict[str, str]] = PLUGIN_GROUPS) -> None:
    """Each group's entry points (of every installed package) into its table."""
    for group, table in groups.items():
        for point in entry_points(group=group):
            if table.get(point.name, point.value) != point.value:
                raise ValueError(f"entry point {point.name!r} of group {group!r} ({point.value}) takes the name of "
                                 f"the built-in {table[point.name]}; choose another name")
            table[point.name] = point.value


_add_plugins()


def resolve(table: dict[str, str], kind: str, what: str):
    if kind not in table:
        raise ValueError(f"unknown {what} kind {kind!r}; known: {sorted(table)}")
    module, name = table[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_backbone(spec: dict, device="cpu"):
    """A backbone adapter (backbones.base.Backbone) of `spec`, its weights loaded."""
    return resolve(BACKBONES, spec["kind"], "backbone").from_spec(spec, device=device)


def build_reward(spec: dict, device="cpu"):
    """A reward: callable (images (B, 3, H, W) in [0, 1], prompts) -> (B,) float tensor."""
    return resolve(REWARDS, spec["kind"], "reward").from_spec(spec, device=device)


def build_features(spec: dict, device="cpu"):
    """An embedder: callable images (B, 3, H, W) in [0, 1] -> (B, D) float tensor."""
    return resolve(FEATURES, spec["kind"], "features").from_spec(spec, device=device)


def world_class(name: str):
    """The World subclass registered as `name` (its module imports without torch: config checks use it)."""
    return resolve(WORLDS, name, "world")


def build_world(name: str | None):
    """The world named by captions.source, or None when the captions come from a prompt file."""
    return None if name is None else world_class(name)()

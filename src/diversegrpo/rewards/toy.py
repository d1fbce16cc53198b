"""Two weight-free rewards for the toy world, computed honestly from the pixels.

Each scores a quality the caption asks for, times the caption's shape (prompt alignment), saturating
once the image is good enough, i.e. at what most of the base model's correct renders reach (as preference
models barely separate two good images: PickScore varies by ~0.01 inside a group), plus a mild palette
taste (2% of the score) for one background tint, as real preference models have (PickScore and HPS
favour certain palettes and lighting). Among good images only the taste differs, and group-normalised
advantages turn it into a full-size signal: the replicator dynamics of the paper push all mass onto
the preferred tint.

The base-model shares quoted below, which set where each term saturates, were measured on the base model
of a world whose pre-training images were all clean, before a share of them was hazy (worlds/toy.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..worlds import toy as world

TASTE = 0.02  # default weight of the palette preference (config: rewards.<name>.taste)
_TASTE_RANGE = 0.5  # colour distance from the preferred tint at which the taste reaches 0


def _saturate(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """0 below `low`, 1 above `high` ("good enough"), linear in between."""
    return ((value - low) / (high - low)).clamp(0, 1)


def _foreground_stats(images: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) soft foreground weights against the (B, 3) background colours, (B,) foreground area share."""
    distance = world.background_distance(images, background)  # (B, H, W)
    weight = torch.sigmoid((distance - world.FOREGROUND_THRESHOLD) * 20)  # soft version of the labeller's threshold
    return weight, weight.mean(dim=(1, 2))


def _shape_alignment(images: torch.Tensor, prompts: list[str], background: torch.Tensor) -> torch.Tensor:
    """(B,) in [0, 1]: how much better the foreground matches the caption's shape than any other shape
    (IoU margin of the templates centred on the object), 1 from a margin of 0.05 (90% of the base
    model's correct renders), 0 below -0.1. Preference models score prompt alignment; without this
    term the colour reward paid as much for a red blob as for a red cross, and Flow-GRPO learnt to smear
    the shapes (a third of its samples lost their shape in 70 iterations)."""
    masks = world.foreground(images, background).numpy()  # (B, H, W)
    margins = np.full(len(prompts), -1.0)
    for i, (mask, prompt) in enumerate(zip(masks, prompts)):
        centre = world.object_centroid(mask)
        if centre is not None:
            ious = world.shape_ious(mask, centre)
            shape = world.parse(prompt)[1]
            margins[i] = ious.pop(shape) - max(ious.values())
    return _saturate(torch.from_numpy(margins).float(), -0.1, 0.05)


def _palette(background: torch.Tensor, preferred: str) -> torch.Tensor:
    """(B,) 1 on the preferred tint, falling linearly with the (B, 3) background's colour distance from
    it (the other tints score 0.24-0.35)."""
    distance = (background - torch.tensor(world.TINTS[preferred])).norm(dim=1)
    return (1 - distance / _TASTE_RANGE).clamp(min=0)


def _target_colours(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([world.COLOURS[world.parse(p)[0]] for p in prompts])  # (B, 3)


class _ToyReward:
    """(1 - taste) * quality + taste * palette; subclasses define the quality and the preferred tint."""

    preferred: str

    def __init__(self, taste: float = TASTE):
        self.taste = taste

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "_ToyReward":
        return cls(spec.get("taste", TASTE))

    def quality(
        self, images: torch.Tensor, weight: torch.Tensor, area: torch.Tensor, prompts: list[str]
    ) -> torch.Tensor:
        """(B,) in [0, 1] from (B, 3, H, W) images, their (B, H, W) soft foreground and (B,) its area."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        background = world.background(images)  # (B, 3)
        weight, area = _foreground_stats(images, background)
        quality = self.quality(images, weight, area, prompts) * _shape_alignment(images, prompts, background)
        return (1 - self.taste) * quality + self.taste * _palette(background, self.preferred)


class ColourReward(_ToyReward):
    """Colour fidelity: how close the foreground's pixels are to the caption's colour (saturating at
    0.75 of a perfect match, which 90% of the base model's valid renders reach; its invalid ones have a
    median of 0.80), times how much foreground there is relative to the smallest shape.
    Taste: a teal background."""

    preferred = "teal"

    def quality(self, images, weight, area, prompts):
        error = (images - _target_colours(prompts)[:, :, None, None]).norm(dim=1) / math.sqrt(3)  # (B, H, W)
        fidelity = 1 - (weight * error).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        presence = (area / _FULL_SHAPE_AREA).clamp(max=1)
        return _saturate(fidelity, 0.5, 0.75) * presence


class ContrastReward(_ToyReward):
    """Figure-ground contrast: foreground luminance above a dark, clean background, relative to what
    the caption's colour allows on the image's own background, penalising grey in-between pixels (blur);
    saturates at 0.4 of ideal (reached by 80% of the base model's valid renders, 56% of its invalid ones).
    Relative to the own background, so that the quality does not prefer a tint: with the darkest tint
    as the ideal's reference, the base model's valid renders scored 0.86 on black and 0.41-0.47 on the
    other tints: a preference ten times the taste, not a mild one.
    Taste: a black background."""

    preferred = "black"

    def quality(self, images, weight, area, prompts):
        luminance = images.mean(dim=1)  # (B, H, W)
        fg = (weight * luminance).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        bg = ((1 - weight) * luminance).sum(dim=(1, 2)) / (1 - weight).sum(dim=(1, 2)).clamp_min(1e-6)
        blur = (4 * weight * (1 - weight)).mean(dim=(1, 2))  # (B,) share of undecided pixels
        ideal = (_target_colours(prompts).mean(dim=1) - bg).clamp_min(0.05)  # (B,) a perfect render's contrast here
        contrast = (fg - bg).clamp(min=0) / ideal - 2 * blur
        return _saturate(contrast, 0.0, 0.4)


class OracleReward(_ToyReward):
    """A diagnostic, not a preference model: the labeller's ground truth (1 for an image of the
    caption's colour and shape on a clean tint, 0 otherwise) plus the same mild taste (teal). It has no
    noise and no partial credit, so a run with it shows what GRPO itself does with a perfect quality
    signal: whether the taste's replicator dynamics move the modes within the budget."""

    preferred = "teal"

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        valid = torch.from_numpy(world.label(images, prompts).valid).float()  # (B,)
        return valid * ((1 - self.taste) + self.taste * _palette(world.background(images), self.preferred))


_FULL_SHAPE_AREA = float(min(t.sum() for t in world.TEMPLATES.values())) / world.IMAGE_SIZE**2

"""Two weight-free rewards for the toy world, computed honestly from the pixels.

Each scores a quality the caption asks for, times the caption's shape (prompt alignment), saturating
once the image is good enough, i.e. at what most of the base model's correct renders reach (as preference
models barely separate two good images: PickScore varies by ~0.01 inside a group), plus a mild
compositional taste (5% of the score), as real preference models have (PickScore and HPS favour certain
framings). Among good images only the taste differs, and group-normalised advantages turn it into a
full-size signal: the replicator dynamics of the paper push all mass onto the preferred quadrant.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import world

TASTE = 0.05  # default weight of the compositional preference (config: rewards.<name>.taste)


def _saturate(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """0 below `low`, 1 above `high` ("good enough"), linear in between."""
    return ((value - low) / (high - low)).clamp(0, 1)


def _foreground_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, W) soft foreground weights, (B, 2) centroid (y, x) in [0, 1], (B,) foreground area share."""
    distance = (images - world.BACKGROUND).norm(dim=1)  # (B, H, W)
    weight = torch.sigmoid((distance - 0.25) * 20)  # soft version of the labeller's threshold
    area = weight.mean(dim=(1, 2))  # (B,)
    h, w = images.shape[-2:]
    ys = torch.linspace(0, 1, h).view(1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, w)
    total = weight.sum(dim=(1, 2)).clamp_min(1e-6)
    centroid = torch.stack([(weight * ys).sum(dim=(1, 2)) / total, (weight * xs).sum(dim=(1, 2)) / total], dim=1)
    return weight, centroid, area


def _shape_alignment(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(B,) in [0, 1]: how much better the foreground matches the caption's shape than any other shape
    (IoU margin of the templates centred on the object), 1 from a margin of 0.05 (95% of the base
    model's correct renders), 0 below -0.1. Preference models score prompt alignment; without this
    term the colour reward paid as much for a red blob as for a red cross, and Flow-GRPO learnt to smear
    the shapes (a third of its samples lost their shape in 70 iterations)."""
    masks = world.foreground(images).numpy()  # (B, H, W)
    margins = np.full(len(prompts), -1.0)
    for i, (mask, prompt) in enumerate(zip(masks, prompts)):
        centre = world.object_centroid(mask)
        if centre is not None:
            ious = world.shape_ious(mask, centre)
            shape = world.parse(prompt)[1]
            margins[i] = ious.pop(shape) - max(ious.values())
    return _saturate(torch.from_numpy(margins).float(), -0.1, 0.05)


def _composition(centroid: torch.Tensor, preferred: tuple[float, float]) -> torch.Tensor:
    """(B,) 1 at the preferred point, falling linearly to 0 at the far corner."""
    return 1 - (centroid - torch.tensor(preferred)).norm(dim=1) / math.sqrt(2)


def _target_colours(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([world.COLOURS[world.parse(p)[0]] for p in prompts])  # (B, 3)


class _ToyReward:
    """(1 - taste) * quality + taste * composition; subclasses define the quality and the taste."""

    preferred: tuple[float, float]

    def __init__(self, taste: float = TASTE):
        self.taste = taste

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "_ToyReward":
        return cls(spec.get("taste", TASTE))

    def quality(self, images: torch.Tensor, weight: torch.Tensor, area: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) in [0, 1] from (B, 3, H, W) images, their (B, H, W) soft foreground and (B,) its area."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        weight, centroid, area = _foreground_stats(images)
        quality = self.quality(images, weight, area, prompts) * _shape_alignment(images, prompts)
        return (1 - self.taste) * quality + self.taste * _composition(centroid, self.preferred)


class ColourReward(_ToyReward):
    """Colour fidelity: how close the foreground's pixels are to the caption's colour (saturating at
    0.75 of a perfect match, which 90% of the base model's valid renders reach; its invalid ones have a
    median of 0.58), times how much foreground there is relative to the smallest shape.
    Taste: objects towards the top-left."""

    preferred = (0.25, 0.25)

    def quality(self, images, weight, area, prompts):
        error = (images - _target_colours(prompts)[:, :, None, None]).norm(dim=1) / math.sqrt(3)  # (B, H, W)
        fidelity = 1 - (weight * error).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        presence = (area / _FULL_SHAPE_AREA).clamp(max=1)
        return _saturate(fidelity, 0.5, 0.75) * presence


class ContrastReward(_ToyReward):
    """Figure-ground contrast: foreground luminance above a dark, clean background, relative to what
    the caption's colour allows, penalising grey in-between pixels (blur); saturates at 0.4 of ideal
    (reached by 85% of the base model's valid renders, by a quarter of its invalid ones).
    Taste: objects towards the bottom-right."""

    preferred = (0.75, 0.75)

    def quality(self, images, weight, area, prompts):
        luminance = images.mean(dim=1)  # (B, H, W)
        fg = (weight * luminance).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        bg = ((1 - weight) * luminance).sum(dim=(1, 2)) / (1 - weight).sum(dim=(1, 2)).clamp_min(1e-6)
        blur = (4 * weight * (1 - weight)).mean(dim=(1, 2))  # (B,) share of undecided pixels
        ideal = _target_colours(prompts).mean(dim=1) - world.BACKGROUND  # (B,) a perfect render's contrast
        contrast = (fg - bg).clamp(min=0) / ideal - 2 * blur
        return _saturate(contrast, 0.0, 0.4)


class OracleReward(_ToyReward):
    """A diagnostic, not a preference model: the labeller's ground truth (1 for an image of the
    caption's colour and shape, 0 otherwise) plus the same mild taste (top-left). It has no noise and no
    partial credit, so a run with it shows what GRPO itself does with a perfect quality signal: whether
    the taste's replicator dynamics move the modes within the budget."""

    preferred = (0.25, 0.25)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        valid = torch.from_numpy(world.label(images, prompts).valid).float()  # (B,)
        _, centroid, _ = _foreground_stats(images)
        return valid * ((1 - self.taste) + self.taste * _composition(centroid, self.preferred))


_FULL_SHAPE_AREA = float(min(t.sum() for t in world.TEMPLATES.values())) / world.IMAGE_SIZE**2

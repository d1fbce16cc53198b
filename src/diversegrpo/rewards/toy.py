"""Two weight-free rewards for the toy world, computed honestly from the pixels.

Each scores a quality the caption asks for, plus a mild compositional taste (5% of the score), as real
preference models have (PickScore and HPS favour certain framings). That taste is what plain GRPO
amplifies into mode collapse: the replicator dynamics of the paper push all mass onto the preferred
quadrant, since group-normalised advantages turn even a small preference into a full-size signal.
"""

from __future__ import annotations

import math

import torch

from .. import world

TASTE = 0.05  # weight of the compositional preference


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


def _composition(centroid: torch.Tensor, preferred: tuple[float, float]) -> torch.Tensor:
    """(B,) 1 at the preferred point, falling linearly to 0 at the far corner."""
    return 1 - (centroid - torch.tensor(preferred)).norm(dim=1) / math.sqrt(2)


def _target_colours(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([world.COLOURS[world.parse(p)[0]] for p in prompts])  # (B, 3)


class ColourReward:
    """Colour fidelity: how close the foreground's pixels are to the caption's colour, times how much
    foreground there is relative to a full shape. Taste: objects towards the top-left."""

    preferred = (0.25, 0.25)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "ColourReward":
        return cls()

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        weight, centroid, area = _foreground_stats(images)
        error = (images - _target_colours(prompts)[:, :, None, None]).norm(dim=1) / math.sqrt(3)  # (B, H, W)
        fidelity = 1 - (weight * error).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        presence = (area / _FULL_SHAPE_AREA).clamp(max=1)
        return (1 - TASTE) * fidelity * presence + TASTE * _composition(centroid, self.preferred)


class ContrastReward:
    """Figure-ground contrast: foreground luminance above a dark, clean background, penalising grey
    in-between pixels (blur). Taste: objects towards the bottom-right."""

    preferred = (0.75, 0.75)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "ContrastReward":
        return cls()

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.detach().float().cpu().clamp(0, 1)
        weight, centroid, _ = _foreground_stats(images)
        luminance = images.mean(dim=1)  # (B, H, W)
        fg = (weight * luminance).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1e-6)
        bg = ((1 - weight) * luminance).sum(dim=(1, 2)) / (1 - weight).sum(dim=(1, 2)).clamp_min(1e-6)
        blur = (4 * weight * (1 - weight)).mean(dim=(1, 2))  # (B,) share of undecided pixels
        contrast = (fg - bg).clamp(0, 1) - 2 * blur
        return (1 - TASTE) * contrast + TASTE * _composition(centroid, self.preferred)


_FULL_SHAPE_AREA = float(min(t.sum() for t in world.TEMPLATES.values())) / world.IMAGE_SIZE**2

"""Weight-free image features for the toy world: 4 x 4 average-pooled pixels, centred on the mean of
the world's background tints.

Every pooled cell shows the background, so cosine distances separate the modes (background tints)
far more than jitter inside a mode: the same role DreamSim plays for photos. The centre is fixed, not
per image: centring each image on its own mean colour would subtract the very tint that is its mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..worlds import toy as world

_CENTRE = torch.tensor(list(world.TINTS.values())).mean(dim=0).view(1, 3, 1, 1)  # (1, 3, 1, 1)


class PooledPixels:
    grid = 4

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "PooledPixels":
        return cls()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.detach().float().cpu(), self.grid)  # (B, 3, 4, 4)
        return (pooled - _CENTRE).flatten(1)  # (B, 48)

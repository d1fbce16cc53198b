"""DreamSim (Fu et al. 2023) image embeddings: the perceptual distance of the creative reward and of the
diversity metric is 1 - cos between them.

dreamsim 0.2.1 downloads its release zip unless its cache directory already holds the files; this
wrapper checks the cache first and raises a ModelNotFound naming the fetch command instead, so the
package never reaches for the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..weights import DREAMSIM_CACHE, DREAMSIM_FILES, ModelNotFound, requirements

IMAGE_SIZE = 224  # DreamSim's input size (dreamsim_args["img_size"])


def check_cache(cache_dir: Path, dreamsim_type: str) -> None:
    """Raise before dreamsim would start a download: every file of its check list must be present."""
    (req,) = requirements("features", "dreamsim", {"kind": "dreamsim", "cache_dir": str(cache_dir),
                                                   "dreamsim_type": dreamsim_type})
    missing = [f for f in req.files or [] if not (cache_dir / f).exists()]
    if missing:
        raise ModelNotFound(f"DreamSim ({dreamsim_type}) cache {cache_dir} lacks {missing}; fetch with `{req.fetch}`")


class DreamSimEmbedder:
    """images (B, 3, H, W) in [0, 1] -> (B, D) DreamSim embeddings (centred, unit norm)."""

    def __init__(self, model, device="cpu", batch_size: int = 32):
        self.model, self.device, self.batch_size = model, torch.device(device), int(batch_size)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "DreamSimEmbedder":
        from dreamsim import dreamsim

        cache_dir = Path(os.path.expanduser(spec.get("cache_dir") or DREAMSIM_CACHE))
        dreamsim_type = spec.get("dreamsim_type", "ensemble")
        if dreamsim_type not in DREAMSIM_FILES:
            raise ValueError(f"dreamsim_type must be one of {sorted(DREAMSIM_FILES)}, got {dreamsim_type!r}")
        check_cache(cache_dir, dreamsim_type)
        model, _ = dreamsim(pretrained=True, device=str(device), cache_dir=str(cache_dir), dreamsim_type=dreamsim_type)
        return cls(model, device, spec.get("batch_size", 32))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device).float()
            if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):  # dreamsim's own preprocessing: bicubic resize
                x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
            out.append(self.model.embed(x).reshape(x.shape[0], -1).float())  # (b, D)
        return torch.cat(out).cpu()

    @staticmethod
    def distances(embeddings: torch.Tensor) -> torch.Tensor:
        """(N, N) DreamSim distances 1 - cos, the same numbers as `model(img_a, img_b)`."""
        e = F.normalize(embeddings, dim=-1)
        return 1 - e @ e.T

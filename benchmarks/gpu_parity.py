"""Preprocessing on the GPU against the CPU reference (tests/test_preprocessing.py checks the CPU path
against each package's own preprocessing). Run on a GPU machine; exits non-zero on a mismatch.

    python benchmarks/gpu_parity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from transformers import CLIPImageProcessor

    from diversegrpo.features.dreamsim import preprocess as dreamsim_preprocess
    from diversegrpo.rewards.clip_common import preprocess as clip_preprocess
    from test_preprocessing import images, reference_pils

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_parity.py needs a GPU")
    x = images(300, 517)
    dreamsim_equal = torch.equal(dreamsim_preprocess(x.cuda()).cpu(), dreamsim_preprocess(x))
    # the torchvision backend resizes where the images lie: within one 8-bit level of the CPU reference
    processor = type("P", (), {"image_processor": CLIPImageProcessor()})()
    y = images(300, 517, seed=2)
    ours = clip_preprocess(y.cuda(), processor)
    expected = processor.image_processor(images=reference_pils(y), return_tensors="pt").pixel_values
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    clip_levels = float(((ours.cpu() - expected) * std * 255).abs().max())
    print({"dreamsim_bit_identical": dreamsim_equal, "clip_max_8bit_levels": round(clip_levels, 4)})
    if not dreamsim_equal or clip_levels > 1.0 + 1e-3:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

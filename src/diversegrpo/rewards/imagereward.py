"""ImageReward (Xu et al. 2023): a BLIP-based human-preference reward, used as an evaluation metric.

Runs through the `image-reward` package's model code (BLIP + MLP head). That package pins
timm==0.6.13 (this project runs timm 1.x for dreamsim), so it is NOT a dependency: install it where the
paper world's evaluation runs (`pip install image-reward`). Weights are never downloaded: ImageReward.pt
and med_config.json (THUDM/ImageReward) and BLIP's tokenizer (bert-base-uncased) come from the HF
cache or local paths.
"""

from __future__ import annotations

import os

import torch

from ..weights import IMAGEREWARD_MODEL, IMAGEREWARD_TEXT, has_module, hf_fetch_command, resolve_model
from .clip_common import to_pil

FILES = ["ImageReward.pt", "med_config.json"]


class ImageReward:
    def __init__(self, model):
        self.model = model

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "ImageReward":
        if not has_module("ImageReward"):
            raise ImportError(
                "the ImageReward metric needs the `image-reward` package (pip install image-reward; it pins "
                "timm==0.6.13, so use a separate evaluation environment), plus its weights: "
                f"`{hf_fetch_command(IMAGEREWARD_MODEL, FILES)}` and `{hf_fetch_command(IMAGEREWARD_TEXT)}`"
            )
        root = resolve_model(spec.get("model") or IMAGEREWARD_MODEL, FILES)
        resolve_model(spec.get("text_model") or IMAGEREWARD_TEXT)  # BLIP's tokenizer, loaded by hub id
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import ImageReward as RM

        model = RM.load(str(root / FILES[0]), device=str(device), med_config=str(root / FILES[1]))
        return cls(model.eval().requires_grad_(False))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        scores = [float(self.model.score(p, im)) for p, im in zip(prompts, to_pil(images))]
        return torch.tensor(scores, dtype=torch.float32)

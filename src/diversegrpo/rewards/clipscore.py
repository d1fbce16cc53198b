"""CLIPScore (Hessel et al. 2021) as an evaluation metric: w * max(cos(image, text), 0) with
OpenAI's CLIP ViT-L/14. `w` defaults to 1 (plain cosine, the scale of the paper's CLIP column);
2.5 gives Hessel's original scale."""

from __future__ import annotations

import torch

from ..weights import CLIPSCORE_MODEL
from .clip_common import batched, image_embeds, load_clip, text_embeds


class CLIPScore:
    def __init__(self, model, processor, weight: float = 1.0, batch_size: int = 16):
        self.model, self.processor = model, processor
        self.weight, self.batch_size = float(weight), int(batch_size)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "CLIPScore":
        location = spec.get("model") or CLIPSCORE_MODEL
        model, processor = load_clip(location, spec.get("processor") or location, device)
        return cls(model, processor, spec.get("weight", 1.0), spec.get("batch_size", 16))

    @torch.no_grad()
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = image_embeds(self.model, self.processor, images), text_embeds(self.model, self.processor, prompts)
        cos = (image * text).sum(-1)
        return self.weight * cos.clamp_min(0)  # (B,)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return batched(self._score, images, prompts, self.batch_size).cpu()

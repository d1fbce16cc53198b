"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Score = logit_scale * cos(image, text) / 26, as in Flow-GRPO (raw PickScore is ~21-23; /26 puts it
near 0.85-0.9, the scale the paper's tables report)."""

from __future__ import annotations

import torch

from ..weights import PICKSCORE_MODEL, PICKSCORE_PROCESSOR
from .clip_common import batched, image_embeds, load_clip, text_embeds


class PickScore:
    def __init__(self, model, processor, divisor: float = 26.0, batch_size: int = 16):
        self.model, self.processor = model, processor
        self.divisor, self.batch_size = float(divisor), int(batch_size)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "PickScore":
        model, processor = load_clip(spec.get("model") or PICKSCORE_MODEL,
                                     spec.get("processor") or PICKSCORE_PROCESSOR, device)
        return cls(model, processor, spec.get("divisor", 26.0), spec.get("batch_size", 16))

    @torch.no_grad()
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = image_embeds(self.model, self.processor, images), text_embeds(self.model, self.processor, prompts)
        cos = (image * text).sum(-1)
        return self.model.logit_scale.exp().float() * cos / self.divisor  # (B,)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return batched(self._score, images, prompts, self.batch_size).cpu()

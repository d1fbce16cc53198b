"""FLUX.1-dev behind the backbone adapter: guidance-distilled (the guidance scale is an embedding, no
CFG batch), latents packed into 2x2 patches for the transformer, rotary position ids for text and image.

The adapter keeps latents unpacked, (B, C, h, w), like every other backbone, and packs them only around
the transformer call: the SDE is elementwise, so packing commutes with it, and initial noise drawn in
this shape is the same noise the diffusers pipeline draws before packing.
"""

from __future__ import annotations

import math

import torch

from ..weights import FLUX_DEV
from .base import Conditioning
from .sd3 import LORA_TARGETS as SD3_TARGETS
from .sd3 import DiffusersBackbone, load_pipeline, resolve_dtype

# The SD3 attention targets, the joint blocks' feed-forwards and the single blocks' MLP projections.
# One regex (PEFT full-matches it against module names) because a bare `proj_out` would also hit the
# model's final output layer, which must stay frozen.
_JOINT = [*SD3_TARGETS, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
LORA_TARGETS = (
    r"(.*\.)?(" + "|".join(t.replace(".", r"\.") for t in _JOINT) + r")"
    r"|single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"
)


def dynamic_shift(image_seq_len: int, config) -> float:
    """FLUX's resolution-dependent shift: exp(mu), mu linear in the number of image tokens (diffusers'
    calculate_shift); time_shift(mu, 1, t) is then exactly SD3's shift formula with shift = exp(mu)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return math.exp(image_seq_len * slope + base_shift - slope * base_len)


class FluxBackbone(DiffusersBackbone):
    """FLUX: `spec` keys beyond the common ones: resolution, dtype, gradient_checkpointing,
    max_sequence_length (T5 tokens, default 512), shift (default: FLUX's dynamic shift)."""

    lora_targets = LORA_TARGETS

    def __init__(self, pipe, spec: dict | None = None, device: str | torch.device | None = None):
        from diffusers import FluxPipeline

        spec = spec or {}
        self._setup(pipe, spec, device or pipe.transformer.device)
        self.lora_pipeline_class = FluxPipeline
        self.guidance_scale = float(spec.get("guidance_scale", 3.5))
        self.max_sequence_length = int(spec.get("max_sequence_length", 512))
        _, h, w = self.latent_shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 latent patches: latent side {h}x{w} must be even (resolution)")
        config = pipe.scheduler.config
        if spec.get("shift"):
            self.shift = float(spec["shift"])
        elif config.get("use_dynamic_shifting", False):
            self.shift = dynamic_shift((h // 2) * (w // 2), config)
        else:
            self.shift = float(config.get("shift", 1.0))

    @classmethod
    def from_pipeline(cls, pipe, spec: dict | None = None) -> "FluxBackbone":
        return cls(pipe, spec)

    @classmethod
    def from_spec(cls, spec: dict, device: str | torch.device = "cpu") -> "FluxBackbone":
        from diffusers import FluxPipeline

        dtype = resolve_dtype(spec.get("dtype", "auto"), device)
        return cls(load_pipeline(FluxPipeline, spec, FLUX_DEV, device, dtype), spec, device)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """No unconditional branch: FLUX.1-dev was distilled to take the guidance scale as an input."""
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=prompts, device=self.device, max_sequence_length=self.max_sequence_length
            )
        return Conditioning(embeds, pooled)  # (B, L, D), (B, P)

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h/2 * w/2, 4C)."""
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    def _unpack(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h/2 * w/2, 4C) -> (B, C, h, w)."""
        b, _, c4 = x.shape
        return x.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)

    def predict(self, x, sigma, embeds, pooled, guidance: float | None = None):
        """(B, C, h, w) velocity at the given distilled guidance (default: the spec's)."""
        b, _, h, w = x.shape
        guidance = self.guidance_scale if guidance is None else guidance
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, self.dtype)  # (hw/4, 3)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=self.dtype)  # (L, 3)
        g = None
        if self.transformer.config.guidance_embeds:
            g = torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        with self.autocast():
            out = self.transformer(
                hidden_states=self._pack(x).to(self.dtype), timestep=sigma.to(self.dtype),  # FLUX: t in [0, 1]
                guidance=g, pooled_projections=pooled.to(self.dtype), encoder_hidden_states=embeds.to(self.dtype),
                txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
            )[0]
        return self._unpack(out, h, w)

    def velocity(self, x, sigma, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """One forward with the guidance embedding; never a [uncond, cond] batch."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return self.predict(x, sigma, cond.embeds, cond.pooled, guidance=guidance_scale).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(latents)

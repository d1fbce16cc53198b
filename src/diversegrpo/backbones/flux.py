"""FLUX.1-dev behind the backbone adapter: guidance-distilled (the guidance scale is an embedding, no
CFG batch), latents packed into 2x2 patches for the transformer, rotary position ids for text and image.

The adapter keeps latents unpacked, (B, C, h, w), like every other backbone, and packs them only around
the transformer call: the SDE is elementwise, so packing commutes with it, and initial noise drawn in
this shape is the same noise the diffusers pipeline draws before packing.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..weights import FLUX_DEV
from .base import Conditioning
from .sd3 import LORA_TARGETS as SD3_TARGETS
from .sd3 import MAX_SEQUENCE_LENGTH, DiffusersBackbone, load_pipeline, resolve_dtype

# Flow-GRPO's FLUX targets (scripts/train_flux.py), exactly: the SD3 attention list and the joint blocks'
# feed-forwards (image and text streams). PEFT suffix-matches them, so `attn.to_q/k/v` also adapt the
# single blocks' attention; the single blocks' proj_mlp / proj_out are not in the reference's list.
LORA_TARGETS = [*SD3_TARGETS, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


class FluxBackbone(DiffusersBackbone):
    """FLUX: `spec` keys beyond the common ones: resolution, dtype, gradient_checkpointing,
    max_sequence_length (T5 tokens, default 128 as in Flow-GRPO), shift (a static sigma shift; default: FLUX's
    dynamic, resolution-dependent shift, as FluxPipeline asks its scheduler)."""

    lora_targets = LORA_TARGETS

    def __init__(self, pipe, spec: dict | None = None, device: str | torch.device | None = None):
        from diffusers import FluxPipeline

        spec = spec or {}
        self._setup(pipe, spec, device or pipe.transformer.device)
        self.lora_pipeline_class = FluxPipeline
        self.guidance_scale = float(spec.get("guidance_scale", 3.5))
        self.max_sequence_length = int(spec.get("max_sequence_length", MAX_SEQUENCE_LENGTH))
        self._ids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        _, h, w = self.latent_shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 latent patches: latent side {h}x{w} must be even (resolution)")
        config = pipe.scheduler.config
        # The effective shift, for the record: the schedule itself is the scheduler's (DiffusersBackbone.sigmas).
        if spec.get("shift"):
            self.shift = float(spec["shift"])
        elif config.get("use_dynamic_shifting", False):
            self.shift = math.exp(self._schedule_kwargs(config, 1)["mu"])  # exp(mu): SD3's formula at that shift
        else:
            self.shift = float(config.get("shift", 1.0))

    def _schedule_kwargs(self, config, num_steps: int) -> dict:
        """FluxPipeline: sigmas linspace(1, 1/N, N) (none with use_flow_sigmas) and the resolution's `mu`
        (used by the scheduler only where it shifts dynamically, as FLUX.1-dev's does)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        _, h, w = self.latent_shape
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        return {"sigmas": sigmas, "mu": mu}

    def _tokenizers(self) -> dict[str, tuple[object, int]]:
        return {"clip": (self.pipe.tokenizer, self.pipe.tokenizer_max_length),
                "t5": (self.pipe.tokenizer_2, self.max_sequence_length)}

    @classmethod
    def from_pipeline(cls, pipe, spec: dict | None = None) -> "FluxBackbone":
        return cls(pipe, spec)

    @classmethod
    def from_spec(cls, spec: dict, device: str | torch.device = "cpu") -> "FluxBackbone":
        from diffusers import FluxPipeline

        dtype = resolve_dtype(spec.get("dtype", "auto"), device)
        return cls(load_pipeline(FluxPipeline, spec, FLUX_DEV, device, dtype), spec, device)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """No unconditional branch: FLUX.1-dev was distilled to take the guidance scale as an input. Long
        prompts are truncated (CLIP at 77 tokens, T5 at max_sequence_length), counted and logged."""
        embeds, pooled, _ = self._encode_quietly(
            lambda: self.pipe.encode_prompt(
                prompt=prompts, prompt_2=prompts, device=self.device, max_sequence_length=self.max_sequence_length
            ),
            prompts,
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

    def _position_ids(self, h: int, w: int, text_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(hw/4, 3) image and (L, 3) text position ids, built once per shape: diffusers builds the image
        ids on the CPU, and copying them to the GPU at every step would stall the host each step."""
        key = (h, w, text_len, str(device), self.dtype)
        if key not in self._ids:
            img_ids = self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, self.dtype)
            self._ids[key] = (img_ids, torch.zeros(text_len, 3, device=device, dtype=self.dtype))
        return self._ids[key]

    def predict(self, x, sigma, embeds, pooled, guidance: float | None = None):
        """(B, C, h, w) velocity at the given distilled guidance (default: the spec's). Timestep (sigma, in
        [0, 1]) and guidance go in as fp32, as in Flow-GRPO's train pass; the transformer itself casts them
        to its compute dtype before scaling them by 1000."""
        b, _, h, w = x.shape
        guidance = self.guidance_scale if guidance is None else guidance
        img_ids, txt_ids = self._position_ids(h, w, embeds.shape[1], x.device)
        g = None
        if self.transformer.config.guidance_embeds:
            g = torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        with self.autocast():
            out = self.transformer(
                hidden_states=self._pack(x).to(self.dtype), timestep=sigma.float(),  # FLUX: t in [0, 1]
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

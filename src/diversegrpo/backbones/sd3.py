"""Stable Diffusion 3.5 (Medium in the paper) behind the backbone adapter: an MMDiT in a 16-channel VAE
latent space, three text encoders (two CLIPs + T5; T5 may be left out), CFG as one [uncond, cond] batch.

Also holds what the FLUX adapter shares: dtype/autocast choice, freezing, loading a pipeline offline.
Saving the LoRA (with its alpha, so that diffusers reloads it at the trained scale) is `Backbone.save_lora`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os

import torch

from ..weights import SD3_MEDIUM, resolve_model
from .base import Backbone, Conditioning, LoraSpec

# Flow-GRPO's SD3 targets (scripts/train_sd3.py): the joint attention `attn` of every block. PEFT matches
# a name or a dotted suffix of one, so `attn.to_q` leaves SD3.5-M's second attention (`attn2`, blocks
# 0-12) frozen, as the reference does; the bare `to_q` would adapt it too.
LORA_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]
# T5 tokens per prompt: Flow-GRPO encodes with max_sequence_length=128 for SD3 and FLUX alike.
MAX_SEQUENCE_LENGTH = 128
logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA (the paper's setting), fp32 on CPU (bf16 matmuls there are slow and lossy)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {name!r}")
    return DTYPES[name]


def load_pipeline(pipeline_class, spec: dict, default_model: str, device, dtype: torch.dtype, **kwargs):
    """A diffusers pipeline from a local directory or the HF cache; never downloads."""
    path = resolve_model(spec.get("model") or default_model)
    pipe = pipeline_class.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, **kwargs)
    return pipe.to(device)


class DiffusersBackbone(Backbone):
    """What SD3 and FLUX share: frozen components, bf16 autocast on CUDA, LoRA saved with its alpha."""

    lora_targets: list[str] | str = LORA_TARGETS

    def _setup(self, pipe, spec: dict, device) -> None:
        self.pipe, self.spec = pipe, dict(spec)
        self.transformer, self.vae = pipe.transformer, pipe.vae
        self.device = torch.device(device)
        self.dtype = self.transformer.dtype
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()  # only LoRA parameters ever train
        if spec.get("gradient_checkpointing", False):
            self.transformer.enable_gradient_checkpointing()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = int(spec.get("resolution", 512)) // self.vae_scale_factor
        self.latent_shape = (self.vae.config.latent_channels, side, side)
        self._sigma_cache: dict[int, torch.Tensor] = {}
        # Running totals since construction, for the trainer's log: prompts encoded, and prompts that
        # each tokenizer cut short (CLIP at 77 tokens, T5 at max_sequence_length).
        self.encoded_prompts = 0
        self.truncated_prompts: dict[str, int] = {}

    # ----- the sigma schedule: the backbone's own scheduler, as its diffusers pipeline asks it ----------
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) fp32 sigmas, ending at 0: exactly `pipe.scheduler.sigmas` after the diffusers
        pipeline's own `retrieve_timesteps` call for `num_steps` (which Flow-GRPO's samplers make too),
        asked of a copy so that the pipeline's scheduler state is never touched. Cached per step count."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if num_steps not in self._sigma_cache:
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

            scheduler = copy.deepcopy(self.pipe.scheduler)
            if self.spec.get("shift"):  # an explicit static shift replaces the scheduler's (dynamic or not)
                scheduler = type(scheduler).from_config(
                    scheduler.config, shift=float(self.spec["shift"]), use_dynamic_shifting=False
                )
            retrieve_timesteps(scheduler, num_steps, "cpu", **self._schedule_kwargs(scheduler.config, num_steps))
            sigmas = scheduler.sigmas.to(torch.float32)
            if sigmas.shape != (num_steps + 1,) or sigmas[-1] != 0:
                raise ValueError(f"{type(scheduler).__name__} gave {sigmas.tolist()} for {num_steps} steps: "
                                 f"expected {num_steps + 1} sigmas ending at 0")
            self._sigma_cache[num_steps] = sigmas.to(self.device)
        return self._sigma_cache[num_steps].clone()

    def _schedule_kwargs(self, config, num_steps: int) -> dict:
        """`sigmas` / `mu` for retrieve_timesteps, as the backbone's diffusers pipeline passes them."""
        return {}

    # ----- prompts: count (and report once per call) what the tokenizers cut off --------------------
    def _tokenizers(self) -> dict[str, tuple[object, int]]:
        """name -> (tokenizer, max tokens) of every text encoder the pipeline runs."""
        return {}

    def _encode_quietly(self, encode, prompts: list[str]):
        """Run the pipeline's `encode_prompt` (via `encode`) with its own truncation warnings (one per
        tokenizer, each quoting the cut text) silenced; count instead, and log one line per call."""
        limits = self._tokenizers()
        cut = {}  # tokenizer -> (B,) whether it cut each prompt short
        for name, (tokenizer, max_length) in limits.items():
            # The pipeline tokenizes each prompt untruncated too (to quote what it cut), which makes
            # transformers warn once that the ids are too long "for this model": they never reach it.
            warned = getattr(tokenizer, "deprecation_warnings", {})
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
            ids = tokenizer(list(prompts), padding=False, truncation=False, verbose=False)["input_ids"]
            cut[name] = [len(i) > max_length for i in ids]
            self.truncated_prompts[name] = self.truncated_prompts.get(name, 0) + sum(cut[name])
        self.encoded_prompts += len(prompts)
        pipeline_logger = logging.getLogger(type(self.pipe).__module__)
        level = pipeline_logger.level
        pipeline_logger.setLevel(logging.ERROR)
        try:
            with torch.no_grad():
                out = encode()
        finally:
            pipeline_logger.setLevel(level)
        n_cut = sum(any(flags) for flags in zip(*cut.values())) if cut else 0
        if n_cut:
            logger.warning(
                "%s: %d of %d prompts truncated by the text encoders (%s); running totals %s of %d prompts",
                type(self).__name__, n_cut, len(prompts),
                ", ".join(f"{k} at {limits[k][1]} tokens: {sum(v)}" for k, v in cut.items()),
                self.truncated_prompts, self.encoded_prompts,
            )
        return out

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast for the transformer on CUDA; the SDE math stays fp32 (sde_step casts)."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def lora_spec(self) -> LoraSpec:
        """The config's `lora: {rank, alpha, init}` with this backbone's targets."""
        return LoraSpec.from_config({"rank": 32, "alpha": 64, **self.spec.get("lora", {})}, self.lora_targets)

    def add_lora(self, spec: LoraSpec | None = None) -> None:
        super().add_lora(spec or self.lora_spec())

    def load_lora(self, directory: str | os.PathLike) -> None:
        if not getattr(self.transformer, "peft_config", None):
            self.add_lora()  # a fresh backbone: attach the configured adapter, then fill it
        super().load_lora(directory)

    @torch.no_grad()
    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) model-space latents -> (B, 3, H, W) in [0, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        images = self.vae.decode(latents, return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> model-space latents (the inverse of decode, up to the VAE)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        dist = self.vae.encode((images * 2 - 1).to(self.device, self.vae.dtype)).latent_dist
        return ((dist.mean - shift) * self.vae.config.scaling_factor).float()


class SD3Backbone(DiffusersBackbone):
    """SD3 / SD3.5: `spec` keys beyond the common ones: resolution, dtype, gradient_checkpointing,
    negative_prompt (default ""), max_sequence_length (T5 tokens, default 128 as in Flow-GRPO), t5 (load T5,
    default true), shift (a static sigma shift replacing the scheduler's; default: the scheduler's own)."""

    def __init__(self, pipe, spec: dict | None = None, device: str | torch.device | None = None):
        from diffusers import StableDiffusion3Pipeline

        spec = spec or {}
        self._setup(pipe, spec, device or pipe.transformer.device)
        self.lora_pipeline_class = StableDiffusion3Pipeline
        # The sigma schedule's shift is the scheduler's (3.0 for SD3.5), unless the spec overrides it.
        self.shift = float(spec.get("shift") or pipe.scheduler.config.get("shift", 1.0))
        self.negative_prompt = spec.get("negative_prompt", "")
        self.max_sequence_length = int(spec.get("max_sequence_length", MAX_SEQUENCE_LENGTH))

    def _schedule_kwargs(self, config, num_steps: int) -> dict:
        """StableDiffusion3Pipeline: the scheduler's default spacing (no explicit sigmas); `mu` only
        where the scheduler shifts dynamically (not SD3.5-M, whose static shift is 3.0)."""
        if not config.get("use_dynamic_shifting", None):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        _, h, w = self.latent_shape
        p = self.transformer.config.patch_size
        return {"mu": calculate_shift((h // p) * (w // p), config.get("base_image_seq_len", 256),
                                      config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                      config.get("max_shift", 1.16))}

    def _tokenizers(self) -> dict[str, tuple[object, int]]:
        pipe = self.pipe
        clip = pipe.tokenizer_max_length
        out = {"clip_l": (pipe.tokenizer, clip), "clip_g": (pipe.tokenizer_2, clip)}
        if pipe.text_encoder_3 is not None and pipe.tokenizer_3 is not None:
            out["t5"] = (pipe.tokenizer_3, self.max_sequence_length)
        return out

    @classmethod
    def from_pipeline(cls, pipe, spec: dict | None = None) -> "SD3Backbone":
        return cls(pipe, spec)

    @classmethod
    def from_spec(cls, spec: dict, device: str | torch.device = "cpu") -> "SD3Backbone":
        from diffusers import StableDiffusion3Pipeline

        dtype = resolve_dtype(spec.get("dtype", "auto"), device)
        # T5-XXL is ~9.5 GB in bf16; without it SD3 conditions on the CLIPs only (zeros in T5's slot).
        extra = {} if spec.get("t5", True) else {"text_encoder_3": None, "tokenizer_3": None}
        pipe = load_pipeline(StableDiffusion3Pipeline, spec, SD3_MEDIUM, device, dtype, **extra)
        return cls(pipe, spec, device)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Long prompts are truncated (CLIP at 77 tokens, T5 at max_sequence_length), never refused:
        counted in `truncated_prompts` and logged."""
        negative = [self.negative_prompt] * len(prompts)
        embeds, neg_embeds, pooled, neg_pooled = self._encode_quietly(
            lambda: self.pipe.encode_prompt(
                prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=self.device,
                do_classifier_free_guidance=True, negative_prompt=negative, negative_prompt_2=negative,
                negative_prompt_3=negative, max_sequence_length=self.max_sequence_length,
            ),
            prompts,
        )
        # (B, L_clip + L_t5, D), (B, L, D), (B, P), (B, P)
        return Conditioning(embeds, pooled, neg_embeds, neg_pooled)

    def predict(self, x, sigma, embeds, pooled):
        """(B, C, h, w) raw velocity; SD3 takes timesteps in [0, 1000], in fp32 as the diffusers pipeline
        passes them (the time embedding's sinusoids are fp32; a bf16 timestep would round 964.3 to 964)."""
        with self.autocast():
            out = self.transformer(
                hidden_states=x.to(self.dtype), timestep=sigma.float() * 1000,
                encoder_hidden_states=embeds.to(self.dtype), pooled_projections=pooled.to(self.dtype),
                return_dict=False,
            )[0]
        return out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(latents)

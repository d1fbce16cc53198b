"""One adapter interface for every backbone (toy, SD3, FLUX), so that GRPO never branches on the model.

A backbone turns prompts into conditioning, gives the sigma schedule and the initial noise, predicts
the (guided) velocity, decodes latents to images, and owns the LoRA adapter: attach, disable for the
reference, save in diffusers' format, load.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import torch

from ..io import atomic_dir, non_finite, reading
from ..sde import sigma_schedule

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class Conditioning:
    """Encoded prompts. `neg_*` hold the unconditional embedding for CFG (None where unused)."""

    embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, P)
    neg_embeds: torch.Tensor | None = None  # (B, L, D)
    neg_pooled: torch.Tensor | None = None  # (B, P)

    def __getitem__(self, index) -> "Conditioning":
        return Conditioning(**{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def repeat_interleave(self, n: int) -> "Conditioning":
        return Conditioning(**{f.name: _repeat(getattr(self, f.name), n) for f in fields(self)})


def _take(t, index):
    return None if t is None else t[index]


def _repeat(t, n):
    return None if t is None else t.repeat_interleave(n, dim=0)


@dataclass
class LoraSpec:
    rank: int
    alpha: float
    target_modules: list[str] | str
    init: str | bool = "gaussian"

    @classmethod
    def from_config(cls, lora: dict, target_modules: list[str] | str) -> "LoraSpec":
        """A backbone config's `lora: {rank, alpha, init}` with the backbone's own targets."""
        return cls(int(lora["rank"]), float(lora["alpha"]), target_modules, lora.get("init", "gaussian"))


class Backbone(ABC):
    """The adapter. Subclasses set `transformer`, `latent_shape`, `shift`, `device`, `dtype`."""

    transformer: torch.nn.Module
    latent_shape: tuple[int, ...]  # (C, H, W) of one latent
    shift: float = 1.0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # the transformer's compute dtype (bf16 autocast on GPU)
    lora_pipeline_class = None  # diffusers pipeline class whose save_lora_weights writes our format

    # ----- prompts, noise, schedule -------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Conditioning: ...

    def initial_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, C, H, W) standard normal latents, drawn on CPU so that seeds mean the same everywhere."""
        return torch.randn((n, *self.latent_shape), generator=generator).to(self.device)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) from 1 to 0: linspace(1, 0, num_steps + 1) with the model's shift. The toy
        backbone's schedule; the diffusers backbones override this with their own scheduler's
        (backbones/sd3.py: DiffusersBackbone.sigmas)."""
        return sigma_schedule(num_steps, self.shift).to(self.device)

    # ----- the model ------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, x: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw velocity for (B, C, H, W) latents at (B,) sigmas; no guidance."""

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """(B, C, H, W) classifier-free-guided velocity; one batched [uncond, cond] forward."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if guidance_scale == 1.0 or cond.neg_embeds is None:
            return self.predict(x, sigma, cond.embeds, cond.pooled).float()
        v = self.predict(
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            torch.cat([cond.neg_embeds, cond.embeds]),
            torch.cat([cond.neg_pooled, cond.pooled]),
        ).float()
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, H', W') images in [0, 1]."""

    # ----- LoRA -----------------------------------------------------------------------------------
    def add_lora(self, spec: LoraSpec) -> None:
        from peft import LoraConfig

        self.transformer.requires_grad_(False)
        config = LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, init_lora_weights=spec.init, target_modules=spec.target_modules
        )
        self.transformer.add_adapter(config)
        for p in self.lora_parameters():
            p.data = p.data.float()  # LoRA weights train in fp32 even where the base is bf16

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.transformer.named_parameters() if "lora_" in n]

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """The reference model: the same transformer with the LoRA switched off."""
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.transformer).items()}

    def save_lora(self, directory: str | os.PathLike) -> Path:
        """Write the adapter so that diffusers' `pipe.load_lora_weights(directory)` loads it (atomic)."""
        state = self.lora_state_dict()
        bad = non_finite(state)
        if bad:
            raise FloatingPointError(f"refusing to write a LoRA with non-finite weights: {bad[:5]}")
        # Without the adapter metadata diffusers reloads at lora_alpha == r, i.e. the wrong scale.
        config = self.transformer.peft_config["default"]
        targets = config.target_modules
        metadata = {"r": config.r, "lora_alpha": config.lora_alpha,
                    "target_modules": sorted(targets) if isinstance(targets, set) else targets}
        with atomic_dir(directory) as tmp:
            self.lora_pipeline_class.save_lora_weights(
                tmp, transformer_lora_layers=state, safe_serialization=True, transformer_lora_adapter_metadata=metadata
            )
        return Path(directory) / LORA_WEIGHTS

    def check_lora_saving(self) -> None:
        """Fail before training when the installed diffusers cannot write the adapter as `save_lora` does
        (diffusers < 0.34 has no `transformer_lora_adapter_metadata`): otherwise the save fails after the last
        iteration, and again on every resume."""
        import inspect

        save = self.lora_pipeline_class.save_lora_weights
        if "transformer_lora_adapter_metadata" not in inspect.signature(save).parameters:
            import diffusers

            raise ImportError(
                f"diffusers {diffusers.__version__} cannot save LoRA adapters with their alpha "
                f"({self.lora_pipeline_class.__name__}.save_lora_weights has no transformer_lora_adapter_metadata); "
                "install diffusers>=0.34 (pip install -U 'diffusers>=0.34')"
            )

    def load_lora(self, directory: str | os.PathLike) -> None:
        """Load an adapter written by `save_lora` (replacing any attached adapter)."""
        from safetensors.torch import load_file

        path = Path(directory) / LORA_WEIGHTS
        with reading("LoRA adapter", path, "train"):
            state = load_file(str(path))
        self.set_lora_state({k.removeprefix("transformer."): v for k, v in state.items()})

    def load_trained_lora(self, lora_config: dict, directory: str | os.PathLike) -> None:
        """A run's trained adapter: attached as the run's backbone config says (its `lora` block), then the weights
        `save_lora` wrote to `directory` loaded."""
        self.add_lora(LoraSpec.from_config(lora_config, self.lora_targets))
        self.load_lora(directory)

    def set_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.transformer, state)
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if missing:
            raise KeyError(f"LoRA keys not in the model: {missing[:5]}")

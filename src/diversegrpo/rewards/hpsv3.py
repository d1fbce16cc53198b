"""HPSv3 (Ma et al. 2025): a Qwen2-VL-7B reward model; the score is the predicted mean `mu`.

Runs through the `hpsv3` package's own inferencer (its model code: special reward token, ranknet
head). That package pins transformers==4.45.2 and deepspeed, so it is NOT a dependency of this project:
install it in the paper world's GPU environment (`pip install hpsv3`). Weights are never downloaded:
the checkpoint (MizzenAI/HPSv3, HPSv3.safetensors) and the base model (Qwen/Qwen2-VL-7B-Instruct)
must be in the HF cache or given as local paths.
"""

from __future__ import annotations

import os

import torch

from ..weights import HPSV3_BASE, HPSV3_CHECKPOINT, ModelNotFound, has_module, hf_fetch_command, resolve_model
from .clip_common import batched, to_pil


def checkpoint_path(spec: dict) -> str:
    """The HPSv3 checkpoint file: `checkpoint` as a local file, else inside `checkpoint_repo` (cache)."""
    name = spec.get("checkpoint", "HPSv3.safetensors")
    if os.path.isfile(os.path.expanduser(name)):
        return os.path.expanduser(name)
    repo = spec.get("checkpoint_repo") or HPSV3_CHECKPOINT
    return str(resolve_model(repo, [name]) / name)


class HPSv3:
    def __init__(self, inferencer, batch_size: int = 8):
        self.inferencer, self.batch_size = inferencer, int(batch_size)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "HPSv3":
        if not has_module("hpsv3"):
            raise ImportError(
                "the HPSv3 reward needs the `hpsv3` package (pip install hpsv3; it pins transformers==4.45.2, "
                "so install it in the GPU environment that runs the paper world), plus its weights: "
                f"`{hf_fetch_command(HPSV3_CHECKPOINT, ['HPSv3.safetensors'])}` and `{hf_fetch_command(HPSV3_BASE)}`"
            )
        ckpt = checkpoint_path(spec)
        try:
            resolve_model(spec.get("base_model") or HPSV3_BASE)  # the inferencer loads it by hub id from the cache
        except ModelNotFound as err:
            raise ModelNotFound(f"HPSv3's base model: {err}") from err
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package calls from_pretrained(hub id)
        from hpsv3 import HPSv3RewardInferencer

        return cls(HPSv3RewardInferencer(checkpoint_path=ckpt, device=str(device)), spec.get("batch_size", 8))

    @torch.no_grad()
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        out = self.inferencer.reward(to_pil(images), prompts)  # (B, 2): mu, sigma
        return out[:, 0].float()

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return batched(self._score, images, prompts, self.batch_size).cpu()

"""The sample stage: ODE images of the evaluation prompts from one run (or the untrained base),
with seeds shared across runs, scored by every reward of the run matrix."""

from __future__ import annotations

import pandas as pd
import torch

from ..backbones.base import LoraSpec
from ..evaluation import score_rewards
from ..io import png_bytes, png_tensor, read_parquet, write_parquet
from ..registry import build_reward
from ..sampling import sample_images
from ..train import build_backbone, resolve_device


def sample_stage(
    backbone_spec: dict,
    lora_dir: str | None,
    eval_captions: str,
    images_per_prompt: int,
    max_prompts: int | None,
    reward_specs: dict[str, dict],
    seed: int,
    device: str,
    torch_threads: int,
    out: str,
) -> None:
    torch.set_num_threads(torch_threads)
    device = resolve_device(device)
    captions = read_parquet(eval_captions, "evaluation captions", "captions")
    if max_prompts:
        captions = captions.head(max_prompts)
    backbone = build_backbone(backbone_spec, device)
    if lora_dir is not None:
        backbone.add_lora(LoraSpec.from_config(backbone_spec["lora"], backbone.lora_targets))
        backbone.load_lora(lora_dir)
    prompts = [p for p in captions.prompt for _ in range(images_per_prompt)]
    images = sample_images(backbone, prompts, backbone_spec["eval_steps"], backbone_spec["guidance_scale"], seed=seed)
    encoded = [png_bytes(im) for im in images]
    stored = torch.stack([png_tensor(b) for b in encoded])  # score what is stored, so scores reproduce from the file
    rewards = score_rewards(stored, prompts, {name: build_reward(spec, device) for name, spec in reward_specs.items()})
    table = pd.DataFrame({
        "prompt_id": [pid for pid in captions.prompt_id for _ in range(images_per_prompt)],
        "prompt": prompts,
        "index": [i for _ in captions.prompt for i in range(images_per_prompt)],
        "seed": seed,
        "image": encoded,
        **{f"reward_{name}": values.numpy() for name, values in rewards.items()},
    })
    write_parquet(table, out)

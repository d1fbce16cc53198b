"""The sample stage: ODE images of both caption splits from one run (or the untrained base), with seeds
shared across runs, scored by every reward of the run matrix. One file, a `split` column: the held-out
(`eval`) captions first, then the first training (`train`) captions, at most `max_prompts` of each."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..distributed import resolve_device
from ..evaluation import score_rewards
from ..io import png_bytes, png_tensor, read_parquet, write_parquet
from ..registry import build_backbone, build_reward
from ..sampling import sample_images

SPLITS = ("eval", "train")  # the order of the rows; the eval images keep the noise they had alone
CAPTIONS = {"eval": "evaluation captions", "train": "training captions"}  # what error messages call them


@dataclass
class SampleSettings:
    """What a sample job reads of the config (the workflow's sample_params, one job's file under results/params/)."""

    backbone: dict  # backbones.<name>, with the pre-trained toy's path
    rewards: dict[str, dict]  # every reward of the run matrix: each image is scored by all
    sample: dict  # the sample section: images_per_prompt, max_prompts
    seed: int  # the replicate's: its images' noise
    device: str
    torch_threads: int


def sample_stage(settings: SampleSettings, lora_dir: str | None, captions: dict[str, str], out: str) -> None:
    """`captions`: split -> its captions file (the captions stage's eval.parquet / train.parquet). Image i of
    the file (eval rows, then train rows) is drawn from the noise of (seed, i): the eval images are those a
    file of the eval split alone would hold, and no train image shares its noise with an eval one."""
    torch.set_num_threads(settings.torch_threads)
    per_prompt, max_prompts = settings.sample["images_per_prompt"], settings.sample.get("max_prompts")
    chosen = {}
    for split in SPLITS:  # read first: a broken captions file fails before the model is loaded
        table = read_parquet(captions[split], CAPTIONS[split], "captions")
        chosen[split] = table.head(max_prompts) if max_prompts else table  # the first in file order
    device = resolve_device(settings.device)
    spec = settings.backbone
    backbone = build_backbone(spec, device)
    if lora_dir is not None:
        backbone.load_trained_lora(spec["lora"], lora_dir)
    rewards = {name: build_reward(reward, device) for name, reward in settings.rewards.items()}
    tables = []
    for split, table in chosen.items():
        offset = sum(len(t) for t in tables)
        prompts = [p for p in table.prompt for _ in range(per_prompt)]
        images = sample_images(backbone, prompts, spec["eval_steps"], spec["guidance_scale"], seed=settings.seed,
                               offset=offset)
        encoded = [png_bytes(im) for im in images]
        stored = torch.stack([png_tensor(b) for b in encoded])  # score what is stored: scores reproduce from the file
        scores = score_rewards(stored, prompts, rewards)
        tables.append(pd.DataFrame({
            "split": split,
            "prompt_id": [pid for pid in table.prompt_id for _ in range(per_prompt)],
            "prompt": prompts,
            "index": [i for _ in table.prompt for i in range(per_prompt)],
            "seed": settings.seed,
            "image": encoded,
            **{f"reward_{name}": values.numpy() for name, values in scores.items()},
        }))
    write_parquet(pd.concat(tables, ignore_index=True), out)

"""Pre-training the toy backbone: rectified-flow matching on a synthetic world's true images, then a
coverage report of the base model (share of valid samples, mode histogram per caption)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..backbones.toy import ToyBackbone, ToyConfig
from ..io import write_parquet
from ..registry import build_world
from ..sampling import sample_images
from ..worlds import World


@dataclass
class PretrainSettings:
    iterations: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    caption_dropout: float = 0.1
    seed: int = 0


def flow_matching_loss(
    backbone: ToyBackbone, images: torch.Tensor, prompts: list[str], generator: torch.Generator
) -> torch.Tensor:
    """E || v_theta(x_sigma, sigma) - (noise - x0) ||^2 with sigma ~ logit-normal (SD3's choice)."""
    x0 = backbone.encode_images(images)  # (B, 3, H, W)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))  # (B,)
    x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    embeds, pooled = backbone.text_encoder(backbone.text_encoder.token_ids(prompts))
    v = backbone.predict(x, sigma, embeds, pooled)
    return ((v - (noise - x0)) ** 2).mean()


def pretrain(
    train_prompts: list[str], config: ToyConfig, settings: PretrainSettings
) -> tuple[ToyBackbone, pd.DataFrame]:
    """Train from scratch on the true images of `train_prompts` in the config's world; returns the model and
    its loss log."""
    torch.manual_seed(settings.seed)
    backbone = ToyBackbone(config)
    world = backbone.text_encoder.world
    modules = backbone.trainable_modules().train()
    optimizer = torch.optim.AdamW(modules.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.lr, total_steps=settings.iterations, pct_start=0.05
    )
    rng, generator = np.random.default_rng(settings.seed), torch.Generator().manual_seed(settings.seed)
    log, start = [], time.perf_counter()
    for it in tqdm(range(settings.iterations), desc="pre-train", mininterval=5):
        prompts = list(rng.choice(train_prompts, size=settings.batch_size))
        images = world.sample_images(prompts, rng)
        prompts = ["" if u < settings.caption_dropout else p for p, u in zip(prompts, rng.random(len(prompts)))]
        loss = flow_matching_loss(backbone, images, prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        log.append({"iteration": it, "loss": loss.item(), "seconds": time.perf_counter() - start})
    modules.eval()
    backbone.text_encoder.requires_grad_(False)
    return backbone, pd.DataFrame(log)


def coverage(
    backbone: ToyBackbone, world: World, prompts: list[str], images_per_prompt: int, steps: int,
    guidance_scale: float, seed: int,
) -> pd.DataFrame:
    """One row per caption: valid share and mode histogram of the base model's ODE samples."""
    rows = []
    for i, prompt in enumerate(prompts):
        images = sample_images(backbone, [prompt] * images_per_prompt, steps, guidance_scale, seed=seed + i)
        labels = world.label(images, [prompt] * images_per_prompt)
        modes = labels.mode[labels.valid]
        hist = np.bincount(modes[modes >= 0], minlength=len(world.modes))
        rows.append({"prompt": prompt, "valid_share": float(labels.valid.mean()),
                     **{f"mode_{m}": int(c) for m, c in zip(world.modes, hist)}})
    return pd.DataFrame(rows)


def write_pretrain_artifacts(backbone, log, cover, directory) -> None:
    backbone.save(directory, metadata={"valid_share": round(float(cover.valid_share.mean()), 4)})
    write_parquet(log, f"{directory}/pretrain_log.parquet")
    write_parquet(cover, f"{directory}/coverage.parquet")


def run_pretrain_stage(spec: dict, seed: int, threads: int, out: str) -> None:
    """Snakemake's `backbone` rule: pre-train on every caption of the world, report coverage."""
    torch.set_num_threads(threads)
    model = spec.get("model", {})
    world = build_world(spec["world"])
    shape = ("patch_size", "num_layers", "num_attention_heads", "attention_head_dim")
    config = ToyConfig(world=world.name, image_size=world.image_size, **{k: model[k] for k in shape if k in model})
    settings = PretrainSettings(
        iterations=model.get("pretrain_iterations", 1500), batch_size=model.get("pretrain_batch_size", 64),
        lr=model.get("pretrain_lr", 1e-3), caption_dropout=model.get("caption_dropout", 0.1), seed=seed,
    )
    prompts = world.captions()
    backbone, log = pretrain(prompts, config, settings)
    cover = coverage(backbone, world, prompts, images_per_prompt=16, steps=spec["eval_steps"],
                     guidance_scale=spec["guidance_scale"], seed=seed)
    print(cover.to_string(), f"\nmean valid share {cover.valid_share.mean():.3f}")
    write_pretrain_artifacts(backbone, log, cover, out)

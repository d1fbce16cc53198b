"""Does one paper-world iteration fit on one GPU, and how fast is it? Random weights, nothing downloaded.

Builds SD3.5-Medium's or FLUX.1-dev's transformer from its public config with random weights, behind the
project's own adapters (SD3Backbone / FluxBackbone: the same predict, CFG, autocast, scheduler sigmas and
LoRA targets), with random text conditioning of the real shapes (CLIP 77 + T5 128 tokens) and a small random
VAE (the real one's decode is a few % of an iteration and needs weights). Runs one `trainer.grpo_iteration`
with config/paper.yaml's settings for that backbone (steps, CFG, noise level, K, micro-batch, optimizer steps,
EMA, gradient checkpointing) on `--prompts` prompts x `--group` images: one GPU's share of a paper iteration is
48 prompts x 24 images / train.processes. Prints seconds per phase, peak GPU memory, achieved TFLOP/s and MFU.

    python benchmarks/gpu_check.py --model sd3       # on a GPU machine (bf16 autocast)
    python benchmarks/gpu_check.py --model flux
    python benchmarks/gpu_check.py --tiny            # seconds on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from diversegrpo import config as cfg
from diversegrpo import trainer
from diversegrpo.backbones.base import Conditioning
from diversegrpo.backbones.flux import FluxBackbone
from diversegrpo.backbones.sd3 import SD3Backbone
from diversegrpo.ema import EMA, EmaSettings

PAPER = Path(__file__).resolve().parents[1] / "config" / "paper.yaml"
CLIP_TOKENS, T5_TOKENS = 77, 128
PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16: the MFU's denominator (--peak-tflops)

# stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev transformer/config.json
CONFIGS = {
    "sd3": dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    ),
    "flux": dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
}
TINY = {
    "sd3": dict(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    ),
    "flux": dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
}
SCHEDULERS = {  # the schedulers' own configs in the two model repositories
    "sd3": dict(shift=3.0),
    "flux": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096),
}


class RandomText:
    """Random prompt embeddings of the real shapes, in place of the text encoders (their weights)."""

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        g = torch.Generator().manual_seed(len(prompts))
        c = self.transformer.config
        tokens = T5_TOKENS if isinstance(self, FluxBackbone) else CLIP_TOKENS + T5_TOKENS
        if getattr(self, "tiny", False):
            tokens = 16

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(self.device, self.dtype)

        n = len(prompts)
        embeds, pooled = rand(n, tokens, c.joint_attention_dim), rand(n, c.pooled_projection_dim)
        if isinstance(self, FluxBackbone):
            return Conditioning(embeds, pooled)  # guidance-distilled: no unconditional branch
        return Conditioning(embeds, pooled, rand(n, tokens, c.joint_attention_dim), rand(n, c.pooled_projection_dim))


class RandomSD3(RandomText, SD3Backbone):
    pass


class RandomFlux(RandomText, FluxBackbone):
    pass


def small_vae(latent_channels: int = 16):
    """A random AutoencoderKL with the real latent shape (16 channels, 8x down) and almost no width."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4,
    )


def paper_config() -> dict:
    """config/paper.yaml laid over config/config.yaml, as the workflow reads it."""
    return cfg.deep_merge(cfg.defaults(), cfg.load(PAPER))


def paper_spec(model: str) -> dict:
    """The backbone section of config/paper.yaml (with the defaults under it)."""
    return paper_config()["backbones"][model]


def random_backbone(model: str, tiny: bool, device: torch.device, dtype: torch.dtype, resolution: int,
                    checkpointing: bool, config: dict | None = None):
    """The project's SD3 / FLUX adapter around a random transformer of the real (or tiny) size, or of
    `config` (with the tiny text conditioning)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel

    spec = paper_spec(model)
    cls = SD3Transformer2DModel if model == "sd3" else FluxTransformer2DModel
    transformer = cls(**(config or (TINY if tiny else CONFIGS)[model])).to(device, dtype)
    vae = small_vae().to(device, dtype)
    pipe = SimpleNamespace(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS[model]),
        components={"transformer": transformer, "vae": vae},
        _prepare_latent_image_ids=FluxPipeline._prepare_latent_image_ids,
    )
    spec = {**spec, "resolution": resolution, "gradient_checkpointing": checkpointing}
    backbone = (RandomSD3 if model == "sd3" else RandomFlux)(pipe, spec, device)
    backbone.tiny = tiny
    return backbone


def forward_flops(bb) -> float:
    """FLOPs of one transformer forward on one sequence (torch's own counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    cond = bb.encode_prompts(["x"])
    x = torch.randn(1, *bb.latent_shape, device=bb.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bb.predict(x, torch.ones(1, device=bb.device), cond.embeds, cond.pooled)
    return float(counter.get_total_flops())


def settings_for(model: str, tiny: bool, args) -> tuple[trainer.MethodSettings, trainer.TrainSettings]:
    """The paper's DiverseGRPO settings for `model` (config.run_spec: nothing restated here), with the
    benchmark's own sizes on top."""
    paper = paper_config()
    spec = cfg.run_spec(paper, model, paper["runs"]["rewards"][0], "diverse_grpo", None)
    train, method = dict(spec["train"]), dict(spec["method"])
    group = args.group or (4 if tiny else train["group_size"])
    creative = dict(method["creative"], k=min(method["creative"]["k"], group),
                    k_max=min(method["creative"]["k_max"], group))
    train.update(prompts_per_iteration=args.prompts, group_size=group,
                 minibatches=1 if tiny else train["minibatches"],
                 micro_batch=args.micro_batch or train["micro_batch"],
                 train_steps=args.steps or (3 if tiny else train["train_steps"]),
                 ema=EmaSettings(**train["ema"]) if train["ema"] else None)
    settings = trainer.TrainSettings(**train)
    methods = trainer.MethodSettings(**{**method, "creative": trainer.CreativeSettings(**creative)})
    methods.sa_steps = min(methods.sa_steps, settings.trained_steps)
    return methods, settings


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(CONFIGS), default="sd3")
    ap.add_argument("--tiny", action="store_true", help="tiny model and batch, runs on CPU in seconds")
    ap.add_argument("--prompts", type=int, default=1, help="prompts of the iteration (one GPU of 4: 12)")
    ap.add_argument("--group", type=int, default=None, help="images per prompt (paper.yaml: 24)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (paper.yaml: 512)")
    ap.add_argument("--steps", type=int, default=None, help="SDE steps (paper.yaml: SD3 10, FLUX 6)")
    ap.add_argument("--micro-batch", type=int, default=None, help="samples per forward (paper.yaml: train.micro_batch)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = paper_spec(args.model)
    resolution = args.resolution or (64 if args.tiny else spec["resolution"])
    checkpointing = spec.get("gradient_checkpointing", False) and not args.no_checkpointing and not args.tiny
    torch.manual_seed(0)

    t0 = time.perf_counter()
    bb = random_backbone(args.model, args.tiny, device, dtype, resolution, checkpointing)
    bb.add_lora()  # paper.yaml's rank / alpha on the adapter's own targets
    flops_fwd = forward_flops(bb)
    method, settings = settings_for(args.model, args.tiny, args)
    build_s = time.perf_counter() - t0

    optimizer = torch.optim.AdamW(bb.lora_parameters(), lr=settings.lr, weight_decay=1e-4)
    ema = EMA(bb.lora_parameters(), settings.ema) if settings.ema else None
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731  stand-in quality score
    embed = lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    log = trainer.grpo_iteration(bb, optimizer, [f"prompt {i}" for i in range(args.prompts)], reward, embed,
                                 method, settings, torch.Generator().manual_seed(0), ema=ema)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total_s = time.perf_counter() - t1

    n = args.prompts * settings.group_size
    k = method.sa_steps
    cfg = 2 if args.model == "sd3" and settings.guidance_scale != 1.0 else 1
    # sequences through the transformer: rollout forwards; train forward + backward (~2x) + the checkpointed
    # recompute; SA-Reg's reference forward on the first K steps
    sequences = cfg * n * (settings.train_steps + (3 + checkpointing) * settings.trained_steps + k)
    tflops = flops_fwd * sequences / total_s / 1e12
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": f"{args.model} ({'tiny' if args.tiny else 'full size'}, random weights)",
        "params_transformer_M": round(sum(p.numel() for p in bb.transformer.parameters()) / 1e6, 1),
        "params_lora_M": round(sum(p.numel() for p in bb.lora_parameters()) / 1e6, 2),
        "images": n, "resolution": resolution, "steps": settings.train_steps, "trained_steps": settings.trained_steps,
        "K": k, "micro_batch": settings.micro_batch, "optimizer_steps": settings.minibatches,
        "gradient_checkpointing": checkpointing, "build_s": round(build_s, 2),
        **{f"{phase}_s": round(s, 3) for phase, s in log.seconds.items()},
        "iteration_s": round(total_s, 3), "seconds_per_image": round(total_s / n, 3),
        "gflop_per_forward": float(f"{flops_fwd / 1e9:.4g}"),
        "tflop_per_s": float(f"{tflops:.4g}"),
        "mfu": round(tflops / args.peak_tflops, 3) if device.type == "cuda" else None,
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "grad_norm": log.stats.grad_norm, "finite": bool(torch.isfinite(torch.tensor(log.stats.policy_loss))),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

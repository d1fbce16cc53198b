"""Does one DiverseGRPO iteration at SD3.5-Medium scale fit, and how fast is it? No weights needed.

Builds an SD3Transformer2DModel with SD3.5-M's public config and random weights, LoRA r=32 on the
paper's targets, random text conditioning of the real shapes (77 CLIP + 256 T5 tokens, 4096-d), and
runs one iteration of the project's own trainer (`trainer.grpo_iteration`): a group of 24 SDE rollouts
at 512 px (64x64 latents) with CFG, the creative reward, and the clipped policy loss with SA-Reg's
reference forward on the first K=3 steps. Prints seconds per phase, peak GPU memory and achieved
TFLOP/s (FLOPs of one forward counted by torch, times the forwards the iteration ran).

    python benchmarks/gpu_check.py                 # on a GPU machine (bf16 autocast)
    python benchmarks/gpu_check.py --tiny          # a few seconds on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from diversegrpo import trainer
from diversegrpo.backbones.base import Backbone, Conditioning, LoraSpec
from diversegrpo.backbones.sd3 import LORA_TARGETS

# stabilityai/stable-diffusion-3.5-medium transformer/config.json
SD35M = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
TINY = dict(
    sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=32,
    pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
)
TEXT_TOKENS = 77 + 256  # CLIP-L/G tokens + T5 tokens (max_sequence_length 256)


class RandomSD3(Backbone):
    """The SD3 adapter's transformer path (same predict/CFG/autocast) with random text embeddings and
    a cheap stand-in decoder, so that no text encoder or VAE weights are needed."""

    def __init__(self, config: dict, latent_side: int, text_tokens: int, device: torch.device, dtype: torch.dtype,
                 checkpointing: bool):
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        self.device, self.dtype, self.shift = device, dtype, 3.0
        self.transformer = SD3Transformer2DModel(**config).to(device, dtype)
        if checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.latent_shape = (config["in_channels"], latent_side, latent_side)
        self.text_tokens, self.lora_pipeline_class = text_tokens, StableDiffusion3Pipeline
        self.lora_targets = LORA_TARGETS

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        g = torch.Generator().manual_seed(len(prompts))
        c = self.transformer.config
        shape = (len(prompts), self.text_tokens, c.joint_attention_dim)

        def rand(*s):
            return torch.randn(*s, generator=g).to(self.device, self.dtype)

        return Conditioning(rand(*shape), rand(len(prompts), c.pooled_projection_dim), rand(*shape),
                            rand(len(prompts), c.pooled_projection_dim))

    def autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def predict(self, x, sigma, embeds, pooled):
        with self.autocast():
            return self.transformer(hidden_states=x.to(self.dtype), timestep=(sigma * 1000).to(self.dtype),
                                    encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, 8h, 8w) stand-in images: the VAE decode is ~2 % of an iteration and needs weights."""
        rgb = torch.sigmoid(latents[:, :3].float())
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")


def forward_flops(bb: RandomSD3) -> float:
    """FLOPs of one transformer forward on one sequence (torch's own counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    cond = bb.encode_prompts(["x"])
    x = torch.randn(1, *bb.latent_shape, device=bb.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bb.predict(x, torch.ones(1, device=bb.device), cond.embeds, cond.pooled)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model and batch, runs on CPU in seconds")
    ap.add_argument("--group", type=int, default=None, help="images per prompt (paper: 24)")
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="SDE steps (SD3.5-M in the paper: 10; --tiny: 3)")
    ap.add_argument("--sa-steps", type=int, default=3, help="K: steps with the reference forward")
    ap.add_argument("--minibatches", type=int, default=4, help="optimizer steps over the group (memory)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    group = args.group or (4 if args.tiny else 24)
    args.steps = args.steps or (3 if args.tiny else 10)
    args.minibatches = 1 if args.tiny else args.minibatches
    resolution = args.resolution or (64 if args.tiny else 512)
    config = TINY if args.tiny else SD35M
    torch.manual_seed(0)

    t0 = time.perf_counter()
    bb = RandomSD3(config, resolution // 8, 16 if args.tiny else TEXT_TOKENS, device, dtype,
                   checkpointing=not args.no_checkpointing and not args.tiny)
    bb.add_lora(LoraSpec(rank=args.rank if not args.tiny else 4, alpha=2 * (args.rank if not args.tiny else 4),
                         target_modules=LORA_TARGETS))
    flops_fwd = forward_flops(bb)
    build_s = time.perf_counter() - t0

    method = trainer.MethodSettings(regularizer="sa_reg", reg_weight=1.0, sa_steps=args.sa_steps,
                                    creative=trainer.CreativeSettings(beta=1.0, k=4 if group >= 8 else 2))
    settings = trainer.TrainSettings(prompts_per_iteration=args.prompts, group_size=group, train_steps=args.steps,
                                     guidance_scale=4.5, noise_level=0.7, minibatches=args.minibatches)
    optimizer = torch.optim.AdamW(bb.lora_parameters(), lr=3e-4)
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731  stand-in quality score
    embed = lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    log = trainer.grpo_iteration(bb, optimizer, [f"prompt {i}" for i in range(args.prompts)], reward, embed,
                                 method, settings, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    total_s = time.perf_counter() - t1

    n = args.prompts * group
    k = min(args.sa_steps, settings.trained_steps)
    # every forward is a CFG pair; backward ~ 2x forward; the reference runs forward only on the first K steps
    sequences = 2 * n * (args.steps + 3 * settings.trained_steps + k)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": "tiny" if args.tiny else "SD3.5-Medium (random weights)",
        "params_transformer_M": sum(p.numel() for p in bb.transformer.parameters()) / 1e6,
        "params_lora_M": sum(p.numel() for p in bb.lora_parameters()) / 1e6,
        "images": n, "resolution": resolution, "steps": args.steps, "trained_steps": settings.trained_steps, "K": k,
        "build_s": round(build_s, 2),
        **{f"{phase}_s": round(s, 3) for phase, s in log.seconds.items()},
        "iteration_s": round(total_s, 3),
        "gflop_per_forward": float(f"{flops_fwd / 1e9:.4g}"),
        "tflop_per_s": float(f"{flops_fwd * sequences / total_s / 1e12:.4g}"),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "grad_norm": log.stats.grad_norm, "finite": bool(torch.isfinite(torch.tensor(log.stats.policy_loss))),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

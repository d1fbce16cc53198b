"""What one GRPO iteration costs beyond the transformer passes it contains (target: at most 10 %).

Times `trainer.grpo_iteration` (DiverseGRPO with SA-Reg and the creative reward, paper.yaml's SD3 settings:
CFG, micro-batches, EMA) against the same transformer passes run bare: the rollout's forwards, the train
pass's forward + backward per trained step and micro-batch, and SA-Reg's reference forwards on the first K
steps. Everything else (the SDE math and log-probs, decoding, scoring, the creative reward, advantages,
optimizer and EMA steps, host syncs) is the overhead. Same backbone, same batch, interleaved repeats, medians.
On CPU with a small random SD3 (the GPU's proportions differ: run it there with --device cuda).

    python benchmarks/iteration_overhead.py            # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from diversegrpo import trainer
from diversegrpo.ema import EMA


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).with_name("gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _gpu_check()
SMALL = dict(  # a small SD3 MMDiT whose passes dominate on CPU, as the real one's do on a GPU
    sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=64,
    pos_embed_max_size=32, dual_attention_layers=(0, 1), qk_norm="rms_norm",
)


def bare_passes(bb, prompts: list[str], method, settings) -> None:
    """The transformer passes of one iteration and nothing else."""
    n = len(prompts) * settings.group_size
    cond = bb.encode_prompts(prompts).repeat_interleave(settings.group_size)
    x = bb.initial_noise(n, torch.Generator().manual_seed(0))
    sigmas = bb.sigmas(settings.train_steps)
    size = settings.micro_batch or n
    chunks = [slice(s, min(s + size, n)) for s in range(0, n, size)]
    with torch.no_grad():
        for i in range(settings.train_steps):
            for c in chunks:
                bb.velocity(x[c], sigmas[i], cond[c], settings.guidance_scale)
    for c in chunks:
        for j in range(settings.trained_steps):
            bb.velocity(x[c], sigmas[j], cond[c], settings.guidance_scale).pow(2).mean().backward()
            if j < method.sa_steps:
                with torch.no_grad(), bb.adapter_disabled():
                    bb.velocity(x[c], sigmas[j], cond[c], settings.guidance_scale)
    for p in bb.lora_parameters():
        p.grad = None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="the tiny model: checks the script in seconds")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    bb = gpu_check.random_backbone("sd3", True, device, dtype, 64 if args.tiny else 128, checkpointing=False,
                                   config=None if args.tiny else SMALL)
    bb.add_lora()
    options = argparse.Namespace(group=args.group, steps=None, prompts=args.prompts, micro_batch=None)
    method, settings = gpu_check.settings_for("sd3", False, options)
    settings.train_steps = 4 if args.tiny else 10
    method.sa_steps = min(method.sa_steps, settings.trained_steps)
    optimizer = torch.optim.AdamW(bb.lora_parameters(), lr=settings.lr, weight_decay=1e-4)
    ema = EMA(bb.lora_parameters(), settings.ema) if settings.ema else None
    prompts = [f"prompt {i}" for i in range(args.prompts)]
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731  a cheap stand-in score
    embed = lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)  # noqa: E731

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {"iteration": [], "bare": []}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name in ("iteration", "bare"):
            sync()
            t0 = time.perf_counter()
            if name == "iteration":
                trainer.grpo_iteration(bb, optimizer, prompts, reward, embed, method, settings,
                                       torch.Generator().manual_seed(r), ema=ema)
            else:
                bare_passes(bb, prompts, method, settings)
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    iteration, bare = statistics.median(times["iteration"]), statistics.median(times["bare"])
    result = {"device": str(device), "images": args.prompts * settings.group_size, "steps": settings.train_steps,
              "micro_batch": settings.micro_batch, "iteration_s": iteration, "bare_passes_s": bare,
              "ratio": iteration / bare, "overhead": iteration / bare - 1, "target_overhead": 0.10}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

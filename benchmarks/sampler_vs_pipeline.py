"""Is the project's ODE sampler as fast as diffusers' own pipeline call? No weights needed.

Builds small random-weight SD3 (SD3.5-M's structure: dual attention, qk rms norm, CLIP-L/G + T5) and FLUX
pipelines the way tests/paper_fixtures.py does, but with a transformer large enough to dominate a call
(several blocks, 32x32 latents), and times, on the same prompts, steps, guidance and batch:

  ours      diversegrpo.sampling.sample_images(backbone, ...)   (the evaluation sampler: encode, Euler ODE, decode)
  rollout   diversegrpo.sampling.sample_rollout(backbone, ...)  (GRPO's sampler: SDE steps, trajectory, log-probs)
  diffusers pipe(prompt=..., latents=<the same noise>, output_type="pt")   (progress bar off)

Repeats are interleaved (ours, pipe, pipe, ours, ...) after one warm-up call of each. Prints images/s of
each (median over repeats), their ratio (target >= 0.95) and the ratio of the fastest repeats (steadier
where other jobs share the machine), the seconds per call each spends outside the transformer's forwards
(text encoding, the sampling loop's own work, VAE decoding: where the two can differ at all), and the
largest pixel difference between the two outputs (same noise, same schedule: 0 in fp32 on CPU).

    python benchmarks/sampler_vs_pipeline.py --threads 1               # CPU, fp32
    python benchmarks/sampler_vs_pipeline.py --device cuda --dtype bfloat16
    python benchmarks/sampler_vs_pipeline.py --tiny                    # seconds: checks the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from diversegrpo.backbones.flux import FluxBackbone  # noqa: E402
from diversegrpo.backbones.sd3 import SD3Backbone  # noqa: E402
from diversegrpo.sampling import sample_images, sample_rollout  # noqa: E402
from paper_fixtures import WORDS, tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402

LATENT = 32  # latent side; the fixtures' VAE halves the resolution once
SIZES = {  # transformer sizes: (benchmark, --tiny)
    "sd3": (dict(num_layers=4, heads=4, head_dim=32, sample_size=LATENT, t5=True),
            dict(num_layers=2, heads=2, head_dim=8, sample_size=8, t5=True)),
    "flux": (dict(num_layers=2, num_single_layers=4, heads=4, head_dim=32),
             dict(num_layers=1, num_single_layers=1, heads=2, head_dim=16)),
}
KINDS = {"sd3": (tiny_sd3_pipeline, SD3Backbone, 4.5), "flux": (tiny_flux_pipeline, FluxBackbone, 3.5)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def outside_transformer(transformer: torch.nn.Module, device: torch.device, timed, fn) -> float:
    """Seconds of one call spent outside the transformer's forwards (encoding, sampler/scheduler, decoding):
    the part in which the two can differ, as both run the same transformer forwards. Measured in a call of
    its own, since the hooks synchronise the device at each forward."""
    inside = [0.0]

    def pre(module, args, kwargs):
        sync(device)
        inside.append(time.perf_counter())

    def post(module, args, kwargs, output):
        sync(device)
        inside[0] += time.perf_counter() - inside.pop()

    handles = [transformer.register_forward_pre_hook(pre, with_kwargs=True),
               transformer.register_forward_hook(post, with_kwargs=True)]
    try:
        total = timed(fn)[0]
    finally:
        for handle in handles:
            handle.remove()
    return total - inside[0]


def prompts_for(n: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)) for i in range(n)]


def bench(kind: str, args, tmp: Path) -> dict:
    make, cls, guidance = KINDS[kind]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sizes = SIZES[kind][1 if args.tiny else 0]
    pipe = make(tmp, 0, **sizes).to(device)
    if dtype != torch.float32:
        pipe.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    latent = sizes.get("sample_size", LATENT if not args.tiny else 8)
    resolution = latent * pipe.vae_scale_factor
    spec = {"resolution": resolution, "max_sequence_length": args.max_sequence_length}
    backbone = cls.from_pipeline(pipe, spec)
    prompts = prompts_for(args.batch)
    seed = 0
    # sample_images' noise (image i from seed * 100_003 + i), handed to the pipeline as its latents
    noise = torch.cat([backbone.initial_noise(1, torch.Generator().manual_seed(seed * 100_003 + j))
                       for j in range(len(prompts))]).to(dtype)
    pipe_latents = backbone._pack(noise) if kind == "flux" else noise

    def ours():
        return sample_images(backbone, prompts, args.steps, guidance, seed, batch_size=args.batch)

    def rollout():
        out = sample_rollout(backbone, prompts, 1, args.steps, guidance, 0.7, torch.Generator().manual_seed(seed))
        return out.images

    def theirs():
        # The backbone runs its transformer under bf16 autocast on CUDA (as Flow-GRPO's accelerate-prepared
        # model does); the pipeline runs plain bf16. --pipe-autocast gives the pipeline the same context,
        # to tell the cost of autocast itself from the sampler's own overhead.
        with backbone.autocast() if args.pipe_autocast else contextlib.nullcontext():
            return pipe(prompt=prompts, latents=pipe_latents, num_inference_steps=args.steps, guidance_scale=guidance,
                        height=resolution, width=resolution, output_type="pt",
                        max_sequence_length=args.max_sequence_length).images

    def timed(fn):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - start, out

    with torch.inference_mode():
        _, a = timed(ours)  # warm-up (and the outputs compared below)
        _, b = timed(theirs)
        timed(rollout)
        times = {"ours": [], "pipe": [], "rollout": []}
        for r in range(args.repeats):
            order = [("ours", ours), ("pipe", theirs), ("rollout", rollout)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(fn)[0])
        outside = {name: outside_transformer(pipe.transformer, device, timed, fn)
                   for name, fn in (("ours", ours), ("pipe", theirs))}
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    best = {k: args.batch / min(v) for k, v in times.items()}
    return {
        "kind": kind,
        "device": str(device),
        "dtype": args.dtype,
        "batch": args.batch,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "pipe_autocast": args.pipe_autocast,
        "latent": latent,
        "transformer_params_M": round(sum(p.numel() for p in pipe.transformer.parameters()) / 1e6, 2),
        "ours_images_per_s": round(ips["ours"], 3),
        "pipe_images_per_s": round(ips["pipe"], 3),
        "ratio": round(ips["ours"] / ips["pipe"], 3),
        "rollout_images_per_s": round(ips["rollout"], 3),
        "rollout_ratio": round(ips["rollout"] / ips["pipe"], 3),
        "ratio_best": round(best["ours"] / best["pipe"], 3),  # fastest repeat of each: steadier on a shared machine
        "ours_outside_transformer_s": round(outside["ours"], 4),
        "pipe_outside_transformer_s": round(outside["pipe"], 4),
        "ours_s": [round(t, 4) for t in times["ours"]],
        "pipe_s": [round(t, 4) for t in times["pipe"]],
        "max_abs_pixel_diff": float((a.float().cpu() - b.float().cpu()).abs().max()),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--max-sequence-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; on a shared CPU, 1 gives steadier numbers)")
    parser.add_argument("--pipe-autocast", action="store_true",
                        help="run the pipeline under the backbone's autocast too (CUDA, non-fp32 only)")
    parser.add_argument("--tiny", action="store_true", help="the test fixtures' sizes, 2 repeats: checks the script")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.steps = min(args.repeats, 2), min(args.steps, 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            result = bench(kind, args, Path(tmp) / kind)
            results.append(result)
            print(
                f"{kind:5s} {result['device']} {result['dtype']}: ours {result['ours_images_per_s']:.2f} img/s, "
                f"diffusers pipe {result['pipe_images_per_s']:.2f} img/s, ratio {result['ratio']:.3f} "
                f"(best-of-repeats {result['ratio_best']:.3f}; target >= 0.95); SDE rollout "
                f"{result['rollout_images_per_s']:.2f} img/s, ratio {result['rollout_ratio']:.3f}; "
                f"outside the transformer {result['ours_outside_transformer_s']:.3f} s vs "
                f"{result['pipe_outside_transformer_s']:.3f} s per call; "
                f"max |pixel diff| {result['max_abs_pixel_diff']:.2e}"
            )
            print(json.dumps(result))
    return results


if __name__ == "__main__":
    main()

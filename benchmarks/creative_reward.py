"""Creative-reward cost per group of 24 (embeddings given) next to one tiny-MMDiT forward on the same group.

Both are timed in the same run, interleaved, so the ratio is robust to a noisy machine.
    python benchmarks/creative_reward.py
"""

from __future__ import annotations

import statistics
import time

import torch

from diversegrpo.backbones.toy import ToyBackbone
from diversegrpo.creative import cosine_distances, exploration_bonus


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(group: int = 24, repeats: int = 200) -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(group, 48)
    backbone = ToyBackbone()
    cond = backbone.encode_prompts(["a red disc"] * group)
    x = backbone.initial_noise(group, torch.Generator().manual_seed(0))
    sigma = torch.full((group,), 0.5)

    def creative(**kw):
        return lambda: exploration_bonus(cosine_distances(embeddings), **kw)

    @torch.no_grad()
    def forward():
        backbone.velocity(x, sigma, cond, guidance_scale=1.0)

    for fn in (creative(), forward):  # warm-up
        fn()
    rows = {}
    for _ in range(3):  # interleave rounds so drift hits both alike
        for name, fn in [
            ("creative k=3 sigma=median", creative(k=3, sigma="median")),
            ("creative k=auto sigma=local", creative(k="auto", sigma="local")),
            ("tiny MMDiT forward", forward),
        ]:
            rows.setdefault(name, []).append(median_seconds(fn, repeats // 3))
    forward_s = statistics.median(rows["tiny MMDiT forward"])
    print(f"group of {group}, median of {repeats} calls, torch threads {torch.get_num_threads()}")
    print(f"{'what':32s} {'ms / group':>11s} {'x forward':>10s}")
    for name, samples in rows.items():
        s = statistics.median(samples)
        print(f"{name:32s} {1000 * s:11.3f} {s / forward_s:10.3f}")


if __name__ == "__main__":
    main()

"""One GRPO / DiverseGRPO iteration, told as a story: sample, score, advantages, train, log.

The backbone adapter hides the model; this module never branches on it. Methods differ only in the
regulariser (none / kl / sa_reg) and in whether the creative reward joins the quality reward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import regularizers
from .backbones.base import Backbone
from .creative import cosine_distances, exploration_bonus, mix
from .grpo import clipped_loss, group_advantages
from .sampling import Rollout, sample_rollout
from .sde import sde_step

Reward = Callable[[torch.Tensor, list[str]], torch.Tensor]
Embedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CreativeSettings:
    beta: float = 1.0
    mix: str = "standardised"
    k: int | str = 4
    k_max: int = 6
    sigma: float | str = "median"
    knn: int = 3


@dataclass
class MethodSettings:
    regularizer: regularizers.RegularizerName = "none"
    reg_weight: float = 0.0
    sa_steps: int = 0  # K
    creative: CreativeSettings | None = None


@dataclass
class TrainSettings:
    prompts_per_iteration: int = 4
    group_size: int = 12
    lr: float = 3e-4
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    global_std: bool = False
    timestep_fraction: float = 0.99
    minibatches: int = 1
    max_grad_norm: float = 1.0
    train_steps: int = 8
    guidance_scale: float = 1.0
    noise_level: float = 0.7
    sde_type: str = "sde"

    @property
    def trained_steps(self) -> int:
        return max(1, int(self.train_steps * self.timestep_fraction))


@dataclass
class Scores:
    quality: torch.Tensor  # (B,) the reward model's score
    rewards: torch.Tensor  # (B,) what the advantages see: quality, or quality mixed with the bonus
    bonus: torch.Tensor | None  # (B,) exploration bonus E
    diversity: float  # mean pairwise distance inside a group, averaged over groups
    clusters: float  # mean clusters found per group (nan without the creative reward)


@dataclass
class StepStats:
    policy_loss: float = 0.0
    regularizer: float = 0.0
    clipfrac: float = 0.0
    approx_kl: float = 0.0
    grad_norm: float = 0.0


@dataclass
class IterationLog:
    reward_mean: float
    reward_std: float
    diversity: float
    clusters: float
    bonus_mean: float
    stats: StepStats = field(default_factory=StepStats)
    seconds: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # world-specific statistics of the rollout (toy: modes)

    def row(self) -> dict:
        seconds = {f"seconds_{k}": v for k, v in self.seconds.items()}
        plain = {k: v for k, v in asdict(self).items() if k not in ("stats", "seconds", "extra")}
        return {**plain, **asdict(self.stats), **self.extra, **seconds}


def group_distances(embeddings: torch.Tensor, group_ids: torch.Tensor) -> list[torch.Tensor]:
    """(N_g, N_g) cosine distances for each group, in group order."""
    return [cosine_distances(embeddings[group_ids == g]) for g in torch.unique(group_ids)]


def mean_pairwise(d: torch.Tensor) -> float:
    n = d.shape[0]
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def score(rollout: Rollout, reward: Reward, embedder: Embedder, creative: CreativeSettings | None) -> Scores:
    """Quality per image, then (DiverseGRPO) the group-level exploration bonus mixed in."""
    quality = reward(rollout.images, rollout.prompts).float().cpu()  # (B,)
    check_finite("reward", quality, rollout.prompts)
    distances = group_distances(embedder(rollout.images), rollout.group_ids)
    diversity = float(np.mean([mean_pairwise(d) for d in distances]))
    if creative is None:
        return Scores(quality, quality, None, diversity, float("nan"))
    rewards, bonus, clusters = quality.clone(), torch.empty_like(quality), []
    for g, d in zip(torch.unique(rollout.group_ids), distances):
        members = rollout.group_ids == g
        out = exploration_bonus(d, k=creative.k, sigma=creative.sigma, knn=creative.knn, k_max=creative.k_max)
        bonus[members] = out.bonus
        rewards[members] = mix(quality[members], out.bonus, creative.beta, creative.mix)
        clusters.append(out.num_clusters)
    check_finite("reward after the creative bonus", rewards, rollout.prompts)
    return Scores(quality, rewards, bonus, diversity, float(np.mean(clusters)))


def check_finite(what: str, values: torch.Tensor, prompts: list[str]) -> None:
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        detail = ", ".join(f"#{i} {prompts[i]!r}" for i in bad[:8])
        raise FloatingPointError(f"non-finite {what} for {len(bad)} sample(s): {detail}")


def train_on_rollout(
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    method: MethodSettings,
    settings: TrainSettings,
    generator: torch.Generator,
) -> StepStats:
    """Rescore the stored trajectories under the current policy: clipped loss + regulariser per step,
    gradients accumulated over the trained steps of a minibatch, one optimizer step per minibatch."""
    batch = advantages.shape[0]
    order = torch.randperm(batch, generator=generator)
    totals, n = StepStats(), 0
    device = rollout.latents.device
    for minibatch in order.chunk(settings.minibatches):
        minibatch = minibatch.to(device)
        cond = rollout.cond[minibatch]
        for j in range(settings.trained_steps):
            x, x_next = rollout.latents[j, minibatch], rollout.latents[j + 1, minibatch]
            sigma, sigma_next = rollout.sigmas[j], rollout.sigmas[j + 1]
            v = backbone.velocity(x, sigma, cond, settings.guidance_scale)
            step = sde_step(x, v, sigma, sigma_next, settings.noise_level, prev_sample=x_next, sde_type=settings.sde_type)
            policy = clipped_loss(advantages[minibatch].to(device), step.log_prob, rollout.log_probs[j, minibatch], settings.clip_range)
            ref_mean = None
            if regularizers.needs_reference(method.regularizer, j, method.sa_steps):
                with torch.no_grad(), backbone.adapter_disabled():
                    v_ref = backbone.velocity(x, sigma, cond, settings.guidance_scale)
                    ref_mean = sde_step(x, v_ref, sigma, sigma_next, settings.noise_level, prev_sample=x_next, sde_type=settings.sde_type).mean
            reg_per_sample = regularizers.penalty(method.regularizer, step.mean, ref_mean, step.std, j, method.sa_steps)
            reg = reg_per_sample.mean()
            loss = policy.loss + method.reg_weight * reg
            if not torch.isfinite(loss):
                per_sample = step.log_prob.detach() + reg_per_sample.detach()
                bad = minibatch[~torch.isfinite(per_sample.cpu())].tolist() or minibatch.tolist()
                detail = ", ".join(f"#{i} {rollout.prompts[i]!r}" for i in bad[:8])
                raise FloatingPointError(
                    f"non-finite loss at step {j} (policy {policy.loss.item()}, regulariser {reg.item()}); "
                    f"{len(bad)} sample(s): {detail}"
                )
            (loss / settings.trained_steps).backward()
            totals.policy_loss += policy.loss.item()
            totals.regularizer += reg.item()
            totals.clipfrac += policy.clipfrac.item()
            totals.approx_kl += policy.approx_kl.item()
            n += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(backbone.lora_parameters(), settings.max_grad_norm)
        if not torch.isfinite(grad_norm):
            prompts = sorted({rollout.prompts[i] for i in minibatch.tolist()})
            raise FloatingPointError(f"non-finite gradient norm on a minibatch with prompts {prompts[:8]}; no optimizer step taken")
        totals.grad_norm += float(grad_norm) / settings.minibatches
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for name in ("policy_loss", "regularizer", "clipfrac", "approx_kl"):
        setattr(totals, name, getattr(totals, name) / n)
    return totals


def grpo_iteration(
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    prompts: list[str],
    reward: Reward,
    embedder: Embedder,
    method: MethodSettings,
    settings: TrainSettings,
    generator: torch.Generator,
    rollout_statistics: Callable[[torch.Tensor, list[str]], dict] | None = None,
) -> IterationLog:
    """sample -> score -> advantages -> train; returns the iteration's log.

    `rollout_statistics(images, prompts)` adds world-specific numbers to the log (the toy world's
    ground-truth modes), computed on the rollout before the update."""
    clock = _Clock()
    rollout = sample_rollout(
        backbone, prompts, settings.group_size, settings.train_steps, settings.guidance_scale,
        settings.noise_level, generator, settings.sde_type,
    )
    clock.lap("sample")
    scores = score(rollout, reward, embedder, method.creative)
    advantages = group_advantages(scores.rewards, rollout.group_ids, settings.global_std, settings.adv_clip)
    extra = rollout_statistics(rollout.images, rollout.prompts) if rollout_statistics else {}
    clock.lap("score")
    stats = train_on_rollout(backbone, optimizer, rollout, advantages, method, settings, generator)
    clock.lap("train")
    return IterationLog(
        reward_mean=float(scores.quality.mean()),
        reward_std=float(scores.quality.std()),
        diversity=scores.diversity,
        clusters=scores.clusters,
        bonus_mean=float(scores.bonus.mean()) if scores.bonus is not None else float("nan"),
        stats=stats,
        seconds=clock.laps,
        extra=extra,
    )


class _Clock:
    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now

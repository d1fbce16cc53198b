"""One GRPO / DiverseGRPO iteration, told as a story: sample, score, advantages, train, log.

The backbone adapter hides the model; this module never branches on it. Methods differ only in the
regulariser (none / kl / sa_reg) and in whether the creative reward joins the quality reward.

Several processes (one per GPU, `accelerate launch`) share one iteration: each samples
group_size / world_size images of every prompt; rewards and features are gathered so that the
advantages and the creative reward see whole groups, in the order one process would hold them
(`BatchLayout`); each process then trains on its own images and the LoRA gradients are averaged.
With the default `SingleProcess` collective every step is what it was with one process.

The settings come first, then `grpo_iteration`, then its steps in the order it takes them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import config, regularizers
from .backbones.base import Backbone
from .creative import cosine_distances, exploration_bonus, gated_bonus, mix
from .distributed import Collective, SingleProcess
from .ema import EMA, EmaSettings
from .evaluation import Reward, check_finite
from .grpo import advantage_scale, clipped_loss, group_advantages
from .metrics import mean_pairwise
from .sampling import Rollout, sample_rollout
from .sde import sde_step

Embedder = Callable[[torch.Tensor], torch.Tensor]
# (images, prompts, {"quality": (B,), "reward": (B,) what the advantages see}) -> numbers for the log
RolloutStatistics = Callable[[torch.Tensor, list[str], dict[str, torch.Tensor]], dict]


# ----- settings: a run config's `method` and `train`, field for field (documented in config/config.yaml) -------
def _defaults_from(part: Callable[[dict], dict]):
    """@dataclass whose fields, left out, take their value in `part` of config/config.yaml's own run
    (config.packaged_spec): the Python API's defaults (tests, benchmarks) are the shipped config's, never
    restated here. A run never takes them: its run config carries every field (train.RunConfig.from_dict)."""

    def make(cls):
        for name in cls.__annotations__:
            if hasattr(cls, name):
                raise TypeError(f"{cls.__name__}.{name}: a default here would restate config/config.yaml's")
            setattr(cls, name, field(default_factory=lambda name=name: part(config.packaged_spec())[name]))
        return dataclass(cls)

    return make


@_defaults_from(lambda spec: spec["method"]["creative"])
class CreativeSettings:
    """The creative reward: methods.*.creative."""

    beta: float
    mix: str
    k: int | str
    k_max: int
    sigma: float | str
    knn: int
    gate: str  # none (the paper's) | median


@dataclass
class MethodSettings:
    """A method: methods.* less its train overrides; what it leaves out is off (config.METHOD_OFF)."""

    regularizer: regularizers.RegularizerName
    reg_weight: float = config.METHOD_OFF["reg_weight"]
    sa_steps: int = config.METHOD_OFF["sa_steps"]  # K (a run config holds the int the adaptive K chose)
    creative: CreativeSettings | None = config.METHOD_OFF["creative"]

    def __post_init__(self):
        if isinstance(self.creative, dict):  # as a run config holds it
            self.creative = CreativeSettings(**self.creative)


@_defaults_from(lambda spec: spec["train"])
class TrainSettings:
    """GRPO's settings: the train section (less config.RUN_KEYS, the run's own) and the backbone's rollout keys
    (config.ROLLOUT_KEYS)."""

    prompts_per_iteration: int
    group_size: int
    lr: float
    clip_range: float
    adv_clip: float
    global_std: bool
    timestep_fraction: float
    minibatches: int  # optimizer steps per iteration: the algorithm
    micro_batch: int | None  # samples per transformer forward (rollout, train, decode): memory only
    max_grad_norm: float
    train_steps: int
    guidance_scale: float
    noise_level: float
    sde_type: str
    ema: EmaSettings | None  # evaluate and save an EMA of the LoRA (Flow-GRPO's); None: the raw weights

    def __post_init__(self):
        if isinstance(self.ema, dict):  # as a run config holds it
            self.ema = EmaSettings(**self.ema)

    @property
    def trained_steps(self) -> int:
        return config.trained_steps(self.train_steps, self.timestep_fraction)


SINGLE_PROCESS = SingleProcess()


# ----- the story ------------------------------------------------------------------------------------------------
def grpo_iteration(
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    prompts: list[str],
    reward: Reward,
    embedder: Embedder,
    method: MethodSettings,
    settings: TrainSettings,
    generator: torch.Generator,
    *,
    rollout_statistics: RolloutStatistics | None = None,
    collective: Collective = SINGLE_PROCESS,
    ema: EMA | None = None,
) -> IterationLog:
    """sample -> score -> advantages -> train; returns the iteration's log.

    `rollout_statistics(images, prompts, rewards)` adds world-specific numbers to the log (a world's
    ground-truth modes, and each mode's mean quality and reward), computed on the rollout before the update.
    With several processes each samples group_size / world_size images of every prompt with its own
    `generator`; the log describes the whole batch, the same on every process."""
    clock = _Clock()
    rollout = sample(backbone, prompts, settings, generator, collective)
    clock.lap("sample")
    scores = score(rollout, reward, embedder, method.creative, collective, global_std=settings.global_std)
    advantages = group_advantages(scores.rewards, scores.layout.group_ids, settings.global_std, settings.adv_clip)
    extra = {}
    if rollout_statistics:  # the images travel only for these statistics (the toy world's small ones)
        extra = rollout_statistics(scores.layout.whole(rollout.images, collective), scores.prompts,
                                   {"quality": scores.quality, "reward": scores.rewards})
    clock.lap("score")
    own = advantages[scores.layout.own].to(rollout.latents.device)  # (b,) this process's samples, moved once
    stats = train_on_rollout(backbone, optimizer, rollout, own, method, settings, generator, collective, ema=ema)
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


# ----- sample ---------------------------------------------------------------------------------------------------
def sample(
    backbone: Backbone, prompts: list[str], settings: TrainSettings, generator: torch.Generator,
    collective: Collective = SINGLE_PROCESS,
) -> Rollout:
    """This process's SDE rollouts: its share of each prompt's group."""
    return sample_rollout(
        backbone, prompts, per_process_group_size(settings.group_size, collective.world_size),
        num_steps=settings.train_steps, guidance_scale=settings.guidance_scale, noise_level=settings.noise_level,
        generator=generator, sde_type=settings.sde_type, micro_batch=settings.micro_batch,
    )


def per_process_group_size(group_size: int, world_size: int) -> int:
    """Images of each prompt one process samples; an error, before any work, when they cannot be equal."""
    if group_size % world_size:
        raise ValueError(
            f"group_size {group_size} is not divisible by the {world_size} training processes: each process "
            f"samples group_size / processes images of every prompt (choose train.processes among the divisors "
            f"of {group_size})"
        )
    return group_size // world_size


# ----- score ----------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Of the whole batch (every process's images, in `layout` order)."""

    quality: torch.Tensor  # (B,) the reward model's score
    rewards: torch.Tensor  # (B,) what the advantages see: quality, or quality mixed with the bonus
    bonus: torch.Tensor | None  # (B,) exploration bonus E, before any gate
    diversity: float  # mean pairwise distance inside a group, averaged over groups
    clusters: float  # mean clusters found per group (nan without the creative reward)
    layout: BatchLayout
    prompts: list[str]  # (B,)


def score(
    rollout: Rollout, reward: Reward, embedder: Embedder, creative: CreativeSettings | None,
    collective: Collective = SINGLE_PROCESS, *, global_std: bool = False,
) -> Scores:
    """Quality per image, then (DiverseGRPO) the group-level exploration bonus mixed in.

    Each process scores and embeds its own images; the quality and the features are gathered, so that
    the bonus and the diversity are those of whole groups, the same on every process. The standardised mix
    measures the bonus in the unit the advantages divide quality by (`global_std` as in group_advantages)."""
    layout = BatchLayout.of(rollout.group_ids, collective)
    prompts = layout.prompts(rollout.group_ids, rollout.prompts)
    quality = layout.whole(reward(rollout.images, rollout.prompts).float().cpu(), collective)  # (B,)
    check_finite("reward", quality, prompts)  # on every process alike: all stop, none waits for the others
    distances = group_distances(layout.whole(embedder(rollout.images), collective), layout.group_ids)
    diversity = float(np.mean([mean_pairwise(d) for d in distances]))
    if creative is None:
        return Scores(quality, quality, None, diversity, float("nan"), layout, prompts)
    rewards, bonus, clusters = quality.clone(), torch.empty_like(quality), []
    unit = advantage_scale(quality, layout.group_ids, global_std).float()  # (B,)
    for g, d in zip(torch.unique(layout.group_ids), distances):
        members = layout.group_ids == g
        out = exploration_bonus(d, k=creative.k, sigma=creative.sigma, knn=creative.knn, k_max=creative.k_max)
        bonus[members] = out.bonus
        paid = gated_bonus(quality[members], out.bonus, creative.gate)  # (N_g,)
        rewards[members] = mix(quality[members], paid, creative.beta, creative.mix, unit[members])
        clusters.append(out.num_clusters)
    check_finite("reward after the creative bonus", rewards, prompts)
    return Scores(quality, rewards, bonus, diversity, float(np.mean(clusters)), layout, prompts)


def group_distances(embeddings: torch.Tensor, group_ids: torch.Tensor) -> list[torch.Tensor]:
    """(N_g, N_g) cosine distances for each group, in group order."""
    return [cosine_distances(embeddings[group_ids == g]) for g in torch.unique(group_ids)]


@dataclass
class BatchLayout:
    """Where each process's samples sit in the iteration's whole batch.

    The whole batch is in single-process order: groups in prompt order, and inside a group rank 0's
    images, then rank 1's, ... So when rank r holds images [r n / W, (r + 1) n / W) of each group of n,
    the whole batch is exactly the batch one process would have sampled.
    """

    group_ids: torch.Tensor  # (B,) of the whole batch
    order: torch.Tensor  # (B,) row of the rank-major gather that lands at each position of the whole batch
    own: torch.Tensor  # (b,) position in the whole batch of each of this process's b samples

    @classmethod
    def of(cls, group_ids: torch.Tensor, collective: Collective) -> "BatchLayout":
        """From this process's (b,) group ids; every process must hold the same b."""
        gathered = collective.gather(group_ids)  # (W b,) rank-major
        order = torch.argsort(gathered, stable=True)  # stable: inside a group, rank by rank
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())  # inverse permutation: gathered row -> position
        b = group_ids.shape[0]
        return cls(gathered[order], order, position[collective.rank * b : (collective.rank + 1) * b])

    def whole(self, local: torch.Tensor, collective: Collective) -> torch.Tensor:
        """(B, ...) of the whole batch from this process's (b, ...) rows."""
        gathered = collective.gather(local)
        return gathered[self.order.to(gathered.device)]

    def prompts(self, local_group_ids: torch.Tensor, local_prompts: list[str]) -> list[str]:
        """The whole batch's prompts (every process samples every prompt of the iteration)."""
        by_group = dict(zip(local_group_ids.tolist(), local_prompts))
        return [by_group[g] for g in self.group_ids.tolist()]


# ----- train ----------------------------------------------------------------------------------------------------
def train_on_rollout(
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    method: MethodSettings,
    settings: TrainSettings,
    generator: torch.Generator,
    collective: Collective = SINGLE_PROCESS,
    *,
    ema: EMA | None = None,
) -> StepStats:
    """Rescore the stored trajectories under the current policy: clipped loss + regulariser per step,
    one optimizer step per minibatch, its gradient accumulated over micro-batches of `settings.micro_batch`
    samples (a memory setting: any micro-batch gives the minibatch's gradient) and over the trained steps.

    `rollout` and `advantages` are this process's own samples, on the backbone's device. Every process holds
    as many, so each makes the same number of minibatches of equal size: the average of their gradients is
    the gradient of the mean loss over the union, which is the minibatch one process would have trained on.
    Host syncs: one per trained step (the finiteness check and the statistics), one per optimizer step."""
    _same_device(rollout.latents.device, advantages=advantages, log_probs=rollout.log_probs, sigmas=rollout.sigmas,
                 embeds=rollout.cond.embeds)
    update = _Update(backbone, optimizer, rollout, advantages, method, settings, collective, ema)
    order = torch.randperm(advantages.shape[0], generator=generator)  # (b,) on CPU: the generator's stream
    sums = np.zeros(4)  # policy_loss, regularizer, clipfrac, approx_kl: per-step means, summed
    grad_norm = 0.0  # mean over the optimizer steps
    for minibatch in order.chunk(settings.minibatches):
        for chunk in minibatch.split(settings.micro_batch or len(minibatch)):
            sums += update.accumulate_gradients(chunk, len(chunk) / len(minibatch))
        grad_norm += update.optimizer_step(minibatch) / settings.minibatches
    if collective.world_size > 1:  # means over equal-sized shares: their average is the whole batch's
        shared = torch.from_numpy(sums)
        collective.mean_([shared])
        sums = shared.numpy()
    means = sums / (settings.minibatches * settings.trained_steps)
    return StepStats(*means.tolist(), grad_norm=grad_norm)


@dataclass
class _Update:
    """What every minibatch and micro-batch of one rollout's training shares."""

    backbone: Backbone
    optimizer: torch.optim.Optimizer
    rollout: Rollout
    advantages: torch.Tensor  # (b,) this process's samples, on the backbone's device
    method: MethodSettings
    settings: TrainSettings
    collective: Collective
    ema: EMA | None

    def accumulate_gradients(self, chunk: torch.Tensor, weight: float) -> np.ndarray:
        """Backward of `weight` x the chunk's mean loss, averaged over the trained steps (weight: the chunk's share
        of its minibatch, so that the chunks' gradients add up to the minibatch's). Returns (4,) the per-step
        statistics summed over the steps, weighted alike."""
        backbone, rollout, method, settings = self.backbone, self.rollout, self.method, self.settings
        index = chunk.to(rollout.latents.device)  # (c,) moved once; `chunk` stays on CPU for messages
        cond, adv, sums = rollout.cond[index], self.advantages[index], np.zeros(4)
        for j in range(settings.trained_steps):
            x, x_next = rollout.latents[j, index], rollout.latents[j + 1, index]
            sigma, sigma_next = rollout.sigmas[j], rollout.sigmas[j + 1]
            v = backbone.velocity(x, sigma, cond, settings.guidance_scale)
            step = sde_step(
                x, v, sigma, sigma_next, settings.noise_level, prev_sample=x_next, sde_type=settings.sde_type
            )
            policy = clipped_loss(adv, step.log_prob, rollout.log_probs[j, index], settings.clip_range)
            ref_mean = None
            if regularizers.needs_reference(method.regularizer, j, method.sa_steps):
                with torch.no_grad(), backbone.adapter_disabled():
                    v_ref = backbone.velocity(x, sigma, cond, settings.guidance_scale)
                    ref_mean = sde_step(
                        x, v_ref, sigma, sigma_next, settings.noise_level, prev_sample=x_next,
                        sde_type=settings.sde_type,
                    ).mean
            reg_per_sample = regularizers.penalty(
                method.regularizer, step.mean, ref_mean, step.std, j, method.sa_steps
            )
            reg = reg_per_sample.mean()
            loss = policy.loss + method.reg_weight * reg
            values = (
                torch.stack([loss, policy.loss, reg, policy.clipfrac, policy.approx_kl]).detach().double().cpu().numpy()
            )
            if not np.isfinite(values[0]):  # before backward: a NaN must never reach the gradients
                what, samples = f"loss at step {j} (policy {values[1]}, regulariser {values[2]})", chunk.tolist()
                check_finite(what, step.log_prob.detach() + reg_per_sample.detach(), rollout.prompts, samples)
                check_finite(what, values[0], rollout.prompts, samples)  # no sample's own terms: all of them
            (loss * weight / settings.trained_steps).backward()  # weight 1: bit-identical to loss / steps
            sums += weight * values[1:]
        return sums

    def optimizer_step(self, minibatch: torch.Tensor) -> float:
        """Average the gradients over processes, clip, step (and update the EMA); returns the gradient norm."""
        parameters = self.backbone.lora_parameters()
        average_gradients(parameters, self.collective)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, self.settings.max_grad_norm))
        check_finite("gradient norm (no optimizer step taken)", grad_norm, self.rollout.prompts, minibatch.tolist())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(parameters)
        return grad_norm


def average_gradients(parameters: list[torch.nn.Parameter], collective: Collective) -> None:
    """Replace each parameter's gradient by its mean over the processes (before clipping, so that the
    norm, the clipping and the optimizer step are the same everywhere). Nothing to do for one process."""
    if collective.world_size == 1:
        return
    for p in parameters:
        if p.grad is None:  # every process must contribute the same buffer
            p.grad = torch.zeros_like(p)
    collective.mean_([p.grad for p in parameters])


def _same_device(device: torch.device, **tensors: torch.Tensor) -> None:
    """Everything an iteration indexes lives on the backbone's device: a CPU tensor indexed with a CUDA
    index (or the reverse) fails only on a GPU, so fail here, on any machine, naming the tensor."""
    wrong = {name: str(t.device) for name, t in tensors.items() if t.device != device}
    if wrong:
        raise ValueError(f"tensors of the iteration must be on the backbone's device {device}; found {wrong}")


class _Clock:
    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now

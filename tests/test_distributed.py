"""One run on several processes, proven on CPU with 2 processes over gloo.

- Exact equivalence: one full rollout, sharded between 2 processes (rank r holds images
  [r n/2, (r+1) n/2) of every group), scored and trained with the gloo collective, gives the advantages,
  the creative bonus and the LoRA after the optimizer step of one process on the full rollout.
- End to end: `accelerate launch` (the command the workflow's train rule uses) of 2 CPU processes of
  `python -m diversegrpo.stages.train` writes one set of artifacts, and a rerun resumes bit-identically.
- Routing: the train rule starts a run with that launcher exactly when its train.processes > 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from diversegrpo import config as C
from diversegrpo import distributed
from test_resume import LORA, assert_same_outputs, build_toy_backbone, toy_run_config
from workflow_helpers import copy_repo

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
WORLD = 2
GROUP = 4  # images per prompt: 2 per process
PROMPTS = ["a red disc", "a green frame", "a blue cross"]


def launcher(processes: int) -> list[str]:
    """What workflow/rules/common.smk's TrainLauncher puts before `-m diversegrpo.stages.train` (test_routing checks
    the rule prints exactly this, test_accelerate_launch runs it)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- exact equivalence of one iteration's math -------------------------------------------------------------
def _settings():
    from diversegrpo.trainer import CreativeSettings, MethodSettings, TrainSettings

    method = MethodSettings(regularizer="sa_reg", reg_weight=10.0, sa_steps=1, creative=CreativeSettings(k=2))
    # the sampler and the trained steps set here, not taken from config.yaml's defaults: the test must not change
    # with them
    train = TrainSettings(prompts_per_iteration=len(PROMPTS), group_size=GROUP, lr=1e-2, train_steps=3,
                          guidance_scale=1.5, noise_level=0.7, sde_type="cps", timestep_fraction=0.5, minibatches=1)
    return method, train


def shard_indices(n_groups: int, group: int, rank: int, world: int) -> torch.Tensor:
    """Rank r's rows of a single-process batch: images [r n/W, (r+1) n/W) of every group, group by group."""
    share = group // world
    return torch.cat([torch.arange(g * group + rank * share, g * group + (rank + 1) * share) for g in range(n_groups)])


def shard(rollout, index: torch.Tensor):
    from diversegrpo.sampling import Rollout

    return Rollout(
        prompts=[rollout.prompts[i] for i in index.tolist()], group_ids=rollout.group_ids[index],
        cond=rollout.cond[index], sigmas=rollout.sigmas, latents=rollout.latents[:, index],
        log_probs=rollout.log_probs[:, index], images=rollout.images[index],
    )


def one_step(backbone_dir: Path, collective: distributed.Collective) -> dict:
    """Build the same full rollout on every process, keep this process's shard, then score, advantages
    and one optimizer step with `collective`; everything a comparison needs, as plain tensors."""
    from diversegrpo.backbones.base import LoraSpec
    from diversegrpo.backbones.toy import ToyBackbone
    from diversegrpo.features.toy import PooledPixels
    from diversegrpo.grpo import group_advantages
    from diversegrpo.rewards.toy import ColourReward
    from diversegrpo.sampling import sample_rollout
    from diversegrpo.trainer import score, train_on_rollout

    torch.set_num_threads(1)
    method, train = _settings()
    backbone = ToyBackbone.load(backbone_dir)
    torch.manual_seed(0)
    backbone.add_lora(LoraSpec(rank=4, alpha=8, target_modules=backbone.lora_targets))
    with torch.no_grad():  # a LoRA away from zero, so that both lora_A and lora_B get gradients
        noise = torch.Generator().manual_seed(1)
        for p in backbone.lora_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    before = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if "lora_" in n}
    rollout = sample_rollout(backbone, PROMPTS, GROUP, train.train_steps, train.guidance_scale, train.noise_level,
                             torch.Generator().manual_seed(0))
    index = shard_indices(len(PROMPTS), GROUP, collective.rank, collective.world_size)
    mine = shard(rollout, index)

    scores = score(mine, ColourReward(), PooledPixels(), method.creative, collective)
    advantages = group_advantages(scores.rewards, scores.layout.group_ids, train.global_std, train.adv_clip)
    own = advantages[scores.layout.own]
    optimizer = RecordingAdamW(backbone.lora_parameters(), lr=train.lr, weight_decay=1e-4)
    stats = train_on_rollout(
        backbone, optimizer, mine, own, method, train, torch.Generator().manual_seed(3), collective
    )

    # the group order: a rank-major gather, then group_ids == g, is the single-process order of group g
    gathered_ids, gathered_index = collective.gather(mine.group_ids), collective.gather(index)
    per_group = [gathered_index[gathered_ids == g] for g in range(len(PROMPTS))]
    ranks = torch.full((3,), float(collective.rank))
    collective.mean_([ranks])
    return {
        "index": index, "own": own, "advantages": advantages, "quality": scores.quality, "rewards": scores.rewards,
        "bonus": scores.bonus, "group_ids": scores.layout.group_ids, "prompts": scores.prompts,
        "whole_index": scores.layout.whole(index, collective), "per_group": per_group, "mean_rank": ranks,
        "diversity": scores.diversity, "clusters": scores.clusters, "stats": asdict(stats),
        "lora": {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if "lora_" in n},
        "gradients": optimizer.gradients, "lora_before": before,
    }


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps the gradients it stepped with (averaged over the processes and clipped)."""

    def step(self, closure=None):
        self.gradients = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def _worker(rank: int, world: int, port: int, backbone_dir: str, out: str) -> None:
    """One of the spawned processes: the environment `accelerate launch` would set, then the real factory."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    collective = distributed.from_environment("cpu")
    assert isinstance(collective, distributed.TorchDistributed) and collective.world_size == world
    result = one_step(Path(backbone_dir), collective)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    collective.close()


@pytest.fixture(scope="module")
def sharded_and_single(tiny_toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(
        _worker, args=(WORLD, free_port(), str(tiny_toy_dir), str(out)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = one_step(tiny_toy_dir, distributed.SingleProcess())
    return ranks, single


def test_layout_reproduces_the_single_process_order(sharded_and_single):
    ranks, single = sharded_and_single
    batch = len(PROMPTS) * GROUP
    assert torch.equal(single["index"], torch.arange(batch))
    for r, result in enumerate(ranks):
        assert torch.equal(result["group_ids"], single["group_ids"])  # groups in prompt order
        assert result["prompts"] == single["prompts"]
        assert torch.equal(result["whole_index"], torch.arange(batch))  # the whole batch is the single batch
        for g, members in enumerate(result["per_group"]):
            assert torch.equal(members, torch.arange(g * GROUP, (g + 1) * GROUP)), (r, g, members)
        torch.testing.assert_close(result["mean_rank"], torch.full((3,), 0.5))
    assert sorted(torch.cat([r["index"] for r in ranks]).tolist()) == list(range(batch))  # the shards cover it once


def test_scores_and_advantages_equal_the_single_process_ones(sharded_and_single):
    ranks, single = sharded_and_single
    assert single["bonus"] is not None and single["bonus"].std() > 0  # the creative bonus is in play
    assert single["advantages"].abs().max() > 0.5
    for result in ranks:
        for key in ("quality", "rewards", "bonus", "advantages"):
            torch.testing.assert_close(result[key], single[key], rtol=0, atol=1e-6, msg=key)
        torch.testing.assert_close(result["own"], single["advantages"][result["index"]], rtol=0, atol=1e-6)
        assert result["diversity"] == pytest.approx(single["diversity"], abs=1e-9)
        assert result["clusters"] == single["clusters"]


def test_lora_after_the_step_equals_the_single_process_one(sharded_and_single):
    ranks, single = sharded_and_single
    first, second = ranks
    for a, b, g in zip(first["gradients"], second["gradients"], single["gradients"]):
        assert torch.equal(a, b)  # averaged: the same on every process
        torch.testing.assert_close(a, g, rtol=1e-5, atol=1e-9)  # the gradient of the whole batch's mean loss
    for name, value in single["lora"].items():
        assert torch.equal(first["lora"][name], second["lora"][name]), f"{name}: the processes' adapters differ"
        # Adam's first step is lr g / (|g| + eps): where a gradient cancels down to ~eps, float rounding of
        # the sum (two halves vs one batch) moves the step by up to ~1e-3 lr. 1e-5 is that, at lr 1e-2.
        torch.testing.assert_close(first["lora"][name], value, rtol=0, atol=1e-5, msg=name)
    # the check can fail: the step moved every LoRA matrix with a gradient by about lr, a thousand times the
    # tolerance (the last block's context query, add_q_proj, feeds nothing and gets none)
    moved = [float((single["lora"][n] - p).abs().max())
             for (n, p), g in zip(single["lora_before"].items(), single["gradients"]) if g.abs().max() > 0]
    assert len(moved) >= len(single["lora"]) - 2 and min(moved) > 1e-3, moved
    for result in ranks:
        assert all(torch.equal(result["lora_before"][n], p) for n, p in single["lora_before"].items())
    for key, value in single["stats"].items():
        for result in ranks:
            assert result["stats"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert single["stats"]["regularizer"] > 0


# ----- pieces that need no second process ---------------------------------------------------------------------
def test_group_size_not_divisible_by_the_processes_fails_before_any_work():
    from diversegrpo.trainer import per_process_group_size

    assert per_process_group_size(24, 4) == 6
    with pytest.raises(ValueError, match="group_size 6 is not divisible by the 4 training processes"):
        per_process_group_size(6, 4)


def test_per_rank_randomness_is_a_function_of_seed_iteration_and_rank():
    from diversegrpo.stages.train import iteration_rng

    def draw(seed, iteration, rank):
        rng, generator = iteration_rng(seed, iteration, rank)
        return rng.integers(1 << 30), torch.randn(4, generator=generator)

    prompts0, noise0 = draw(3, 5, 0)
    assert torch.equal(noise0, torch.randn(4, generator=torch.Generator().manual_seed(3 * 1_000_003 + 5)))  # as before
    prompts1, noise1 = draw(3, 5, 1)
    assert prompts1 == prompts0  # the same prompts on every process
    assert not torch.equal(noise1, noise0)
    assert torch.equal(draw(3, 5, 1)[1], noise1)  # pure
    assert not torch.equal(draw(3, 6, 1)[1], noise1) and not torch.equal(draw(4, 5, 1)[1], noise1)


def test_run_refuses_a_launch_of_another_size(tmp_path):
    from diversegrpo.stages.train import Run, RunConfig

    spec = toy_run_config(tmp_path / "no-backbone-needed", processes=2)
    with pytest.raises(ValueError, match=r"asks for 2 training process\(es\) but 1 were launched"):
        Run(RunConfig.from_dict(spec), tmp_path / "run")


def test_run_spec_carries_processes_only_when_several():
    config = C.deep_merge(C.load(ROOT / "config/config.yaml"), C.load(ROOT / "config/tiny.yaml"))
    assert "processes" not in C.run_spec(config, "toy", "colour", "flow_grpo", None)  # config.json as before
    config["methods"]["diverse_grpo"]["train"] = {"processes": 2}
    assert C.run_spec(config, "toy", "colour", "diverse_grpo", None)["processes"] == 2
    assert "processes" not in C.run_spec(config, "toy", "colour", "flow_grpo", None)


def test_paper_runs_ask_slurm_for_one_gpu_per_process():
    paper = C.load(ROOT / "config/paper.yaml")
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm-gpu/config.yaml").read_text())
    assert paper["train"]["processes"] > 1
    assert profile["set-resources"]["train"]["gpu"] == paper["train"]["processes"]


# ----- the workflow's train rule --------------------------------------------------------------------------------
def test_train_rule_uses_the_launcher_exactly_when_processes_exceed_one(tmp_path):
    work = copy_repo(tmp_path / "repo")
    override = tmp_path / "processes.yaml"  # diverse_grpo on 2 processes, the other methods on 1
    override.write_text(yaml.safe_dump({"methods": {"diverse_grpo": {"train": {"processes": 2}}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1",
         "--configfile", "config/tiny.yaml", str(override)],
        cwd=work, capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = [
        line.strip() for line in (result.stdout + result.stderr).splitlines() if "-m diversegrpo.stages.train " in line
    ]
    config = C.deep_merge(C.load(ROOT / "config/config.yaml"), C.load(ROOT / "config/tiny.yaml"))
    runs = [(r, m, s) for _, r, m, s in C.run_matrix(config)]
    assert len(commands) == len(runs), commands
    for reward, method, seed in runs:
        out = f"results/runs/toy/{reward}/{method}/seed{seed}"
        prefix = " ".join(launcher(2)) if method == "diverse_grpo" else sys.executable
        wanted = (f"{prefix} -m diversegrpo.stages.train --run-config {out}/config.json --out {out} "
                  f"> logs/train/toy/{reward}/{method}/seed{seed}.log 2>&1")
        assert any(c.endswith(wanted) for c in commands), f"{wanted}\nnot in\n" + "\n".join(commands)


# ----- end to end: accelerate launch, 2 CPU processes ------------------------------------------------------------
@pytest.mark.slow
def test_accelerate_launch_of_two_cpu_processes_writes_one_run_and_resumes(tmp_path):
    backbone = build_toy_backbone(tmp_path / "backbone")
    spec = toy_run_config(backbone, method="diverse_grpo", iterations=2, checkpoint_every=1, eval_every=1, processes=2)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(spec))
    out = tmp_path / "run"

    def launch() -> str:
        command = [*launcher(2), "-m", "diversegrpo.stages.train", "--run-config", str(config), "--out", str(out)]
        proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stderr

    launch()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tensorboard/")]
    assert len(events) == 1, events  # live monitoring: the main process's one event file
    files = [f for f in files if f not in events]
    assert files == sorted(["checkpoints/state.pt", "curve.parquet", "log.parquet", LORA, "timings.parquet"]), files
    log = pd.read_parquet(out / "log.parquet")
    assert log.iteration.tolist() == [0, 1]  # one row per iteration: one writer
    assert pd.read_parquet(out / "curve.parquet").iteration.tolist() == [0, 1, 2]
    assert log[["reward_mean", "diversity", "bonus_mean", "valid_share"]].notna().all().all()
    assert torch.load(out / "checkpoints/state.pt", weights_only=True)["iteration"] == 1

    # a run killed after its checkpoint at iteration 1: the rerun resumes there and ends where the first did
    first = tmp_path / "first"
    out.rename(first)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints/state.pt").write_bytes((first / "checkpoints/state.pt").read_bytes())
    err = launch()
    assert err.count("resumed from") == 1, err[-3000:]  # said once: by the main process
    assert "ignoring" not in err
    assert_same_outputs(first, out)

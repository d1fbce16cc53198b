"""A training run: `python -m diversegrpo.train --run-config RUN.json --out DIR`.

Writes DIR/lora/pytorch_lora_weights.safetensors (diffusers-loadable), DIR/log.parquet (one row per
iteration) and DIR/curve.parquet (ODE evaluations on held-out prompts every `eval_every` iterations,
the Pareto curves). Resumable: DIR/checkpoints/state.pt holds the LoRA, the optimizer, the iteration and
the logs; each iteration's randomness depends only on (seed, iteration), so a resumed run is
bit-identical to an uninterrupted one on CPU.

A checkpoint records a fingerprint of what made it (`config_hash`: the run config, the package version
and the toy backbone's weights). A rerun with anything changed ignores the stale checkpoint, says so on
stderr, and starts over; so does a rerun after a checkpoint that cannot be read. A checkpoint whose
LoRA or optimizer state holds a NaN / inf is never written: the last good one stays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import __version__, trainer
from .backbones.base import Backbone, LoraSpec
from .evaluation import per_prompt, score_rewards, world_statistics
from .io import load_state, remove_stale_temps, save_state, write_parquet
from .registry import BACKBONES, build_features, build_reward, resolve
from .sampling import sample_images

CHECKPOINT = "checkpoints/state.pt"
# Files of a backbone directory whose bytes join the config hash (the toy world's pre-trained model).
BACKBONE_FILES = ("config.json", "model.safetensors")


def config_hash(config: dict) -> str:
    """Fingerprint of everything a run's trajectory depends on: the resolved run config (canonical JSON),
    the package version (a bump reruns every stage, and must not resume an old trajectory) and the bytes
    of the backbone's weights when `backbone.path` holds them (a re-pre-trained toy model).
    Paper backbones (Hugging Face ids / large directories) enter through their spec only."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode())
    h.update(f"diversegrpo {__version__}".encode())
    path = config.get("backbone", {}).get("path")
    if path:
        for name in BACKBONE_FILES:
            f = Path(path) / name
            if f.is_file():
                h.update(name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class RunConfig:
    """Everything one run needs, resolved by the workflow (config/config.yaml + the run's names)."""

    backbone: dict
    reward: dict
    features: dict
    method: trainer.MethodSettings
    train: trainer.TrainSettings
    iterations: int
    eval_every: int
    checkpoint_every: int
    eval_images_per_prompt: int
    train_prompts: list[str]
    eval_prompts: list[str]
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        creative = d["method"].get("creative")
        d["method"] = trainer.MethodSettings(**{**d["method"], "creative": trainer.CreativeSettings(**creative) if creative else None})
        d["train"] = trainer.TrainSettings(**d["train"])
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_backbone(spec: dict, device) -> Backbone:
    return resolve(BACKBONES, spec["kind"], "backbone").from_spec(spec, device=device)


def iteration_rng(seed: int, iteration: int) -> tuple[np.random.Generator, torch.Generator]:
    """The randomness of one iteration, a pure function of (seed, iteration): resumes need no RNG state."""
    return np.random.default_rng([seed, iteration]), torch.Generator().manual_seed(seed * 1_000_003 + iteration)


class Run:
    """A run's state: model, optimizer, logs; checkpointed every `checkpoint_every` iterations."""

    def __init__(self, cfg: RunConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.config_hash = config_hash(asdict(cfg))  # defaults filled in: a changed default changes it too
        torch.set_num_threads(cfg.torch_threads)
        self.device = resolve_device(cfg.device)
        self.backbone = build_backbone(cfg.backbone, self.device)
        torch.manual_seed(cfg.seed)  # the LoRA's random init (lora_A): same seed, same adapter
        self.backbone.add_lora(LoraSpec.from_config(cfg.backbone["lora"], self.backbone.lora_targets))
        self.reward = build_reward(cfg.reward, self.device)
        self.embedder = build_features(cfg.features, self.device)
        self.optimizer = torch.optim.AdamW(self.backbone.lora_parameters(), lr=cfg.train.lr, weight_decay=1e-4)
        self.iteration, self.log, self.curve = 0, [], []
        self._resume()

    def _resume(self) -> None:
        """Continue from DIR/checkpoints/state.pt when it was made by this very config; otherwise start
        over (with a note on stderr) and leave the stale file to be replaced by the first checkpoint."""
        path = self.out / CHECKPOINT
        for directory in (self.out, path.parent, self.out / "lora"):
            remove_stale_temps(directory)  # leftovers of a writer killed mid-write (kill -9, OOM killer)
        if not path.exists():
            return
        try:
            state = load_state(path)
        except Exception as e:  # noqa: BLE001 (a truncated or foreign file: never fatal, never trusted)
            print(f"note: ignoring unreadable checkpoint {path} ({type(e).__name__}: {e}); starting over", file=sys.stderr)
            return
        if state.get("config_hash") != self.config_hash:
            print(
                f"note: ignoring checkpoint {path} (iteration {state.get('iteration')}): it was made with a different "
                f"run config, package version or backbone (hash {str(state.get('config_hash'))[:12]} != "
                f"{self.config_hash[:12]}); starting over",
                file=sys.stderr,
            )
            return
        if not 0 < state["iteration"] <= self.cfg.iterations:
            print(f"note: ignoring checkpoint {path} at iteration {state['iteration']} of {self.cfg.iterations}", file=sys.stderr)
            return
        self.backbone.set_lora_state(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.log, self.curve = state["iteration"], state["log"], state["curve"]
        print(f"resumed from {path} at iteration {self.iteration}", file=sys.stderr)

    def checkpoint(self) -> None:
        """Save the resumable state; refuse (keeping the previous checkpoint) when it is not finite."""
        lora, optimizer = self.backbone.lora_state_dict(), self.optimizer.state_dict()
        bad = [k for k, v in lora.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        bad += [f"optimizer.{i}.{k}" for i, s in optimizer["state"].items() for k, v in s.items()
                if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"iteration {self.iteration}: non-finite LoRA / optimizer state {bad[:5]}; not checkpointed "
                f"(the last good checkpoint {self.out / CHECKPOINT} is kept)"
            )
        save_state(
            {"config_hash": self.config_hash, "lora": lora, "optimizer": optimizer,
             "iteration": self.iteration, "log": self.log, "curve": self.curve},
            self.out / CHECKPOINT,
        )

    def evaluate(self) -> dict:
        """ODE samples on held-out prompts, fixed seeds: one point of the reward-diversity curve."""
        cfg, n = self.cfg, self.cfg.eval_images_per_prompt
        prompts = [p for p in cfg.eval_prompts for _ in range(n)]
        images = sample_images(self.backbone, prompts, cfg.backbone["eval_steps"], cfg.train.guidance_scale, seed=cfg.seed)
        rewards = score_rewards(images, prompts, {"reward": self.reward})
        table = per_prompt(images, prompts, self.embedder(images), rewards, toy_world=cfg.backbone["kind"] == "toy", with_ssim=False)
        return {"iteration": self.iteration, **table.drop(columns=["prompt", "n_images"]).mean().to_dict()}

    def step(self) -> None:
        rng, generator = iteration_rng(self.cfg.seed, self.iteration)
        prompts = list(rng.choice(self.cfg.train_prompts, size=self.cfg.train.prompts_per_iteration, replace=False))
        statistics = world_statistics if self.cfg.backbone["kind"] == "toy" else None
        result = trainer.grpo_iteration(
            self.backbone, self.optimizer, prompts, self.reward, self.embedder, self.cfg.method, self.cfg.train,
            generator, statistics,
        )
        self.log.append({"iteration": self.iteration, **result.row()})
        self.iteration += 1

    def train(self) -> None:
        cfg = self.cfg
        if not self.curve:
            self.curve.append(self.evaluate())
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"{self.out}", mininterval=2)
        while self.iteration < cfg.iterations:
            self.step()
            row = self.log[-1]
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", diversity=f"{row['diversity']:.3f}", refresh=False)
            bar.update()
            if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                self.curve.append(self.evaluate())
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iterations:
                self.checkpoint()
        bar.close()

    def finish(self) -> None:
        # Wall-clock seconds go to their own file, so that log.parquet is bit-identical across reruns.
        log = pd.DataFrame(self.log)
        timing = [c for c in log.columns if c.startswith("seconds_")]
        write_parquet(log[["iteration", *timing]], self.out / "timings.parquet")
        write_parquet(log.drop(columns=timing), self.out / "log.parquet")
        write_parquet(pd.DataFrame(self.curve), self.out / "curve.parquet")
        self.backbone.save_lora(self.out / "lora")  # last: its presence marks a finished run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", required=True, type=Path, help="JSON written by the workflow's run_config rule")
    parser.add_argument("--out", required=True, type=Path, help="the run's directory under results/runs/")
    args = parser.parse_args(argv)
    run = Run(RunConfig.from_dict(json.loads(args.run_config.read_text())), args.out)
    run.train()
    run.finish()


if __name__ == "__main__":
    main()

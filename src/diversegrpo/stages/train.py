"""A training run: `python -m diversegrpo.stages.train --run-config RUN.json --out DIR`.

Writes DIR/lora/pytorch_lora_weights.safetensors (diffusers-loadable), DIR/log.parquet (one row per
iteration) and DIR/curve.parquet (ODE evaluations on held-out prompts every `eval_every` iterations,
the Pareto curves). Resumable: DIR/checkpoints/state.pt holds the LoRA, the optimizer, the iteration and
the logs; each iteration's randomness depends only on (seed, iteration), so a resumed run is
bit-identical to an uninterrupted one on CPU.

A checkpoint records a fingerprint of what made it (`config_hash`: the run config, the package version
and the toy backbone's weights). A rerun with anything changed ignores the stale checkpoint, says so on
stderr, and starts over; so does a rerun after a checkpoint that cannot be read. A checkpoint whose
LoRA or optimizer state holds a NaN / inf is never written: the last good one stays.

Several processes (`accelerate launch --num_processes N -m diversegrpo.stages.train ...`, one per GPU; the
run config's `processes` must equal N) train one run together: each samples group_size / N images of
every prompt (see trainer.py). Only the main process writes (checkpoints, LoRA, Parquet files) and shows
progress; every process resumes from the same checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import __version__, distributed, tracking, trainer
from ..backbones.base import LoraSpec
from ..ema import EMA
from ..evaluation import per_prompt, score_rewards, world_statistics
from ..io import load_state, non_finite, reading, remove_stale_temps, save_state, write_parquet
from ..registry import build_backbone, build_features, build_reward, build_world
from ..sampling import sample_images

CHECKPOINT = "checkpoints/state.pt"
# Files of a backbone directory whose bytes join the config hash (the toy world's pre-trained model).
BACKBONE_FILES = ("config.json", "model.safetensors")


# Run-config fields with the value a run config that lacks them means (they were added after runs existed).
ABSENT = {"processes": 1, "world": None}


def config_hash(config: dict) -> str:
    """Fingerprint of everything a run's trajectory depends on: the resolved run config (canonical JSON),
    the package version (a bump reruns every stage, and must not resume an old trajectory) and the bytes
    of the backbone's weights when `backbone.path` holds them (a re-pre-trained toy model).
    Paper backbones (Hugging Face ids / large directories) enter through their spec only."""
    h = hashlib.sha256()
    # a field at the value its absence means hashes as runs did before the field existed
    config = {k: v for k, v in config.items() if k not in ABSENT or v != ABSENT[k]}
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
    """Everything one run needs, resolved by the workflow (config.run_spec, plus the prompts)."""

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
    seed: int
    device: str
    torch_threads: int
    processes: int = 1  # training processes of this one run (absent from a run config: 1; config.run_spec)
    world: str | None = None  # the world of the captions, whose ground truth the logs add (absent: a prompt file)
    adaptive_k: dict | None = None  # how sa_steps: auto chose method.sa_steps (stages.run_config; absent: a fixed K)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """A run config as the run_config stage writes it: every field set. One left out would silently take the
        Python API's default (config/config.yaml's of today), so it is an error that names it."""
        method, train = d["method"], d["train"]
        _require_every_field(trainer.MethodSettings, method, "method")
        if method["creative"] is not None:
            _require_every_field(trainer.CreativeSettings, method["creative"], "method.creative")
        _require_every_field(trainer.TrainSettings, train, "train")
        return cls(**{**d, "method": trainer.MethodSettings(**method), "train": trainer.TrainSettings(**train)})


def _require_every_field(settings: type, values: dict, where: str) -> None:
    missing = [f.name for f in fields(settings) if f.name not in values]
    if missing:
        raise ValueError(f"the run config's {where} lacks {missing}: a run config sets every field (rebuild it "
                         f"with the run_config rule)")


def iteration_rng(seed: int, iteration: int, rank: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """The randomness of one iteration, a pure function of (seed, iteration): resumes need no RNG state.

    The numpy generator (the iteration's prompts) is the same on every process; the torch generator (the
    SDE noise, the minibatch order) is each process's own, a function of (seed, iteration, rank). Rank 0
    keeps the one-process stream, so a one-process run is what it always was."""
    prompts = np.random.default_rng([seed, iteration])
    if rank == 0:
        return prompts, torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    state = np.random.SeedSequence([seed, iteration, rank]).generate_state(1, np.uint64)[0]
    return prompts, torch.Generator().manual_seed(int(state))


class Run:
    """A run's state: model, optimizer, logs; checkpointed every `checkpoint_every` iterations."""

    def __init__(self, cfg: RunConfig, out: Path, collective: distributed.Collective | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.collective = collective or distributed.SingleProcess(distributed.resolve_device(cfg.device))
        if cfg.processes != self.collective.world_size:
            raise ValueError(
                f"the run config asks for {cfg.processes} training process(es) but {self.collective.world_size} were "
                f"launched; start it with `accelerate launch --num_processes {cfg.processes} "
                f"-m diversegrpo.stages.train ...` "
                f"(the workflow's train rule does), or with plain `python -m diversegrpo.stages.train ...` for 1"
            )
        trainer.per_process_group_size(cfg.train.group_size, self.collective.world_size)  # fails before any work
        tracking.chosen()  # DIVERSEGRPO_TRACKER: an unknown or missing tracker fails before any work too
        self.config_hash = config_hash(asdict(cfg))  # defaults filled in: a changed default changes it too
        torch.set_num_threads(cfg.torch_threads)
        self.device = self.collective.device  # one process: cfg.device; several: this process's own GPU
        self.backbone = build_backbone(cfg.backbone, self.device)
        torch.manual_seed(cfg.seed)  # the LoRA's random init (lora_A): same seed, same adapter
        self.backbone.add_lora(LoraSpec.from_config(cfg.backbone["lora"], self.backbone.lora_targets))
        self.backbone.check_lora_saving()  # now, not after the last iteration
        self.reward = build_reward(cfg.reward, self.device)
        self.embedder = build_features(cfg.features, self.device)
        self.world = build_world(cfg.world)
        self.optimizer = torch.optim.AdamW(self.backbone.lora_parameters(), lr=cfg.train.lr, weight_decay=1e-4)
        self.ema = EMA(self.backbone.lora_parameters(), cfg.train.ema) if cfg.train.ema else None
        self.iteration, self.log, self.curve = 0, [], []
        self._resume()
        self.tracker = tracking.open_tracker(self.out, self.iteration, self.collective.is_main, asdict(cfg), self.curve)

    def _resume(self) -> None:
        """Continue from DIR/checkpoints/state.pt when it was made by this very config; otherwise start
        over (with a note on stderr) and leave the stale file to be replaced by the first checkpoint."""
        path = self.out / CHECKPOINT
        if self.collective.is_main:
            for directory in (self.out, path.parent, self.out / "lora"):
                remove_stale_temps(directory)  # leftovers of a writer killed mid-write (kill -9, OOM killer)
        self.collective.barrier()  # the clean-up is the main process's write: nobody reads before it is done
        self._load_checkpoint(path)
        # Every process read the same file; should one of them have failed to, their loops would differ.
        iterations = self.collective.gather(torch.tensor([self.iteration]))
        if not bool((iterations == self.iteration).all()):
            raise RuntimeError(f"the training processes resumed at different iterations {iterations.tolist()} "
                               f"from {path}")

    def _note(self, message: str) -> None:
        if self.collective.is_main:
            print(message, file=sys.stderr)

    def _load_checkpoint(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            state = load_state(path)
        except Exception as e:  # noqa: BLE001 (a truncated or foreign file: never fatal, never trusted)
            self._note(f"note: ignoring unreadable checkpoint {path} ({type(e).__name__}: {e}); starting over")
            return
        if state.get("config_hash") != self.config_hash:
            self._note(
                f"note: ignoring checkpoint {path} (iteration {state.get('iteration')}): it was made with a different "
                f"run config, package version or backbone (hash {str(state.get('config_hash'))[:12]} != "
                f"{self.config_hash[:12]}); starting over"
            )
            return
        if not 0 < state["iteration"] <= self.cfg.iterations:
            self._note(f"note: ignoring checkpoint {path} at iteration {state['iteration']} of {self.cfg.iterations}")
            return
        self.backbone.set_lora_state(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.iteration, self.log, self.curve = state["iteration"], state["log"], state["curve"]
        self._note(f"resumed from {path} at iteration {self.iteration}")

    def checkpoint(self) -> None:
        """Save the resumable state (the main process); refuse (keeping the previous checkpoint) when it is
        not finite, on every process alike (the LoRA and the optimizer are equal everywhere)."""
        lora, optimizer = self.backbone.lora_state_dict(), self.optimizer.state_dict()
        bad = non_finite(lora) + [f"optimizer.{i}.{k}" for i, s in optimizer["state"].items() for k in non_finite(s)]
        if bad:
            raise FloatingPointError(
                f"iteration {self.iteration}: non-finite LoRA / optimizer state {bad[:5]}; not checkpointed "
                f"(the last good checkpoint {self.out / CHECKPOINT} is kept)"
            )
        if self.collective.is_main:
            save_state(
                {"config_hash": self.config_hash, "lora": lora, "optimizer": optimizer,
                 "iteration": self.iteration, "log": self.log, "curve": self.curve,
                 **({"ema": self.ema.state_dict()} if self.ema is not None else {})},
                self.out / CHECKPOINT,
            )

    def published(self) -> contextlib.AbstractContextManager:
        """The weights that are evaluated and saved: the EMA's when the run keeps one (Flow-GRPO's choice)."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_in(self.backbone.lora_parameters())

    def evaluate(self) -> dict:
        """ODE samples on held-out prompts, fixed seeds: one point of the reward-diversity curve."""
        cfg, n = self.cfg, self.cfg.eval_images_per_prompt
        prompts = [p for p in cfg.eval_prompts for _ in range(n)]
        batch = cfg.train.micro_batch or 64
        with self.published():
            images = sample_images(self.backbone, prompts, cfg.backbone["eval_steps"], cfg.train.guidance_scale,
                                   seed=cfg.seed, batch_size=batch, decode_batch=min(batch, 8))
        self.tracker.log_images(self.iteration, images, n, prompts)  # a few of them, live (tracking.py)
        rewards = score_rewards(images, prompts, {"reward": self.reward})
        labels = self.world.label(images, prompts) if self.world else None
        table = per_prompt(images, prompts, self.embedder(images), rewards, labels, with_ssim=False)
        return {"iteration": self.iteration, **table.drop(columns=["prompt", "n_images"]).mean().to_dict()}

    def step(self) -> None:
        rng, generator = iteration_rng(self.cfg.seed, self.iteration, self.collective.rank)
        prompts = list(rng.choice(self.cfg.train_prompts, size=self.cfg.train.prompts_per_iteration, replace=False))
        statistics = functools.partial(world_statistics, self.world) if self.world else None
        result = trainer.grpo_iteration(
            self.backbone, self.optimizer, prompts, self.reward, self.embedder, self.cfg.method, self.cfg.train,
            generator, rollout_statistics=statistics, collective=self.collective, ema=self.ema,
        )
        # running totals of prompts the text encoders cut short (paper backbones; long prompts are kept)
        truncated = {f"truncated_{name}": n for name, n in getattr(self.backbone, "truncated_prompts", {}).items()}
        self.log.append({"iteration": self.iteration, **result.row(), **truncated})
        self.tracker.log_row("train", self.log[-1])
        self.iteration += 1

    def evaluate_on_main(self) -> None:
        """The held-out evaluation, by the main process alone while the others wait: it is a few ODE
        batches every `eval_every` iterations, and one process keeps the curve's seeds and order simple."""
        if self.collective.is_main:
            self.curve.append(self.evaluate())
            self.tracker.log_row("eval", self.curve[-1])
        self.collective.barrier()

    def train(self) -> None:
        cfg = self.cfg
        if self.iteration == 0:  # a resumed run has its first evaluation in the checkpoint's curve
            self.evaluate_on_main()
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"{self.out}", mininterval=2,
                   disable=not self.collective.is_main)
        while self.iteration < cfg.iterations:
            self.step()
            row = self.log[-1]
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", diversity=f"{row['diversity']:.3f}", refresh=False)
            bar.update()
            if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                self.evaluate_on_main()
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iterations:
                self.checkpoint()
        bar.close()

    def finish(self) -> None:
        """The run's artifacts, written by the main process."""
        if not self.collective.is_main:
            return
        # Wall-clock seconds go to their own file, so that log.parquet is bit-identical across reruns.
        log = pd.DataFrame(self.log)
        timing = [c for c in log.columns if c.startswith("seconds_")]
        write_parquet(log[["iteration", *timing]], self.out / "timings.parquet")
        write_parquet(log.drop(columns=timing), self.out / "log.parquet")
        write_parquet(pd.DataFrame(self.curve), self.out / "curve.parquet")
        with self.published():
            self.backbone.save_lora(self.out / "lora")  # last: its presence marks a finished run
        self.tracker.close()


LOCK = ".train.lock"


class RunFolderLocked(RuntimeError):
    """Another trainer is writing the run folder."""


@contextlib.contextmanager
def run_lock(out: Path):
    """One writer per run folder: an exclusive flock on DIR/.train.lock, held until the block ends. A
    second trainer on the folder fails at once, naming it and the holder's pid. The OS releases a flock
    when its process dies (kill -9, the OOM killer, a killed job's orphaned trainer once it ends), so a
    crash never leaves the folder locked; a stale file is just reused. The file is removed on the way out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderLocked(
                f"run folder {str(out)!r} is being written by another trainer (pid {holder} holds {str(path)!r}); "
                f"wait for it to finish or stop it (`kill {holder}`), then rerun. Only one trainer may write a run "
                f"folder; a crashed one never blocks it (its lock goes with the process)"
            ) from None
        # A finishing holder removes the file: if it did between our open and our lock, we locked a file
        # that is gone, and another trainer may lock the new one. Lock the file that is there.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding the lock (see above)
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", required=True, type=Path, help="JSON written by the workflow's run_config rule")
    parser.add_argument("--out", required=True, type=Path, help="the run's directory under results/runs/")
    args = parser.parse_args(argv)
    # The main process (rank 0 of `accelerate launch`, the only one that writes) locks the run folder
    # before anything touches it; the other processes of the same run are its own.
    main_process = distributed.launched_processes() == 1 or int(os.environ.get("RANK", "0")) == 0
    try:
        lock = run_lock(args.out) if main_process else contextlib.nullcontext()
        with lock:
            with reading("run config", args.run_config, "run_config"):
                cfg = RunConfig.from_dict(json.loads(args.run_config.read_text()))
            collective = distributed.from_environment(distributed.resolve_device(cfg.device))
            run = Run(cfg, args.out, collective)
            run.train()
            run.finish()
    except RunFolderLocked as e:
        sys.exit(f"error: {e}")
    # Not in a `finally`: a process that failed must exit (the launcher then stops the others), not wait
    # in close()'s barrier for processes that will never get there.
    collective.close()


if __name__ == "__main__":
    main()

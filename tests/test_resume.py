"""Resumable training, proven: a run killed with SIGKILL at random points and rerun ends bit-identical
to an uninterrupted one; a checkpoint of another config is never resumed.

The helpers here (a tiny pre-trained toy backbone, a run config) are shared by test_determinism.py and
test_nan.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from diversegrpo import config as C

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
LORA = "lora/pytorch_lora_weights.safetensors"


# ----- shared helpers --------------------------------------------------------------------------------
def build_toy_backbone(directory: Path) -> Path:
    """A toy backbone pre-trained for two iterations (numbers meaningless, every code path real)."""
    from diversegrpo.backbones.toy import ToyConfig
    from diversegrpo.stages.pretrain import PretrainSettings, pretrain
    from diversegrpo.worlds import toy as world

    prompts = [c["prompt"] for c in world.captions()]
    backbone, _ = pretrain(
        prompts, ToyConfig(num_layers=1, attention_head_dim=8), PretrainSettings(iterations=2, batch_size=4)
    )
    backbone.save(directory)
    return directory


def toy_run_config(backbone_dir: Path, method: str = "diverse_grpo", **overrides) -> dict:
    """The JSON the workflow's run_config rule writes, for config/tiny.yaml, with `overrides` on top."""
    from diversegrpo.worlds import toy as world

    config = C.deep_merge(C.load(ROOT / "config/config.yaml"), C.load(ROOT / "config/tiny.yaml"))
    spec = C.run_spec(config, "toy", "colour", method, str(backbone_dir))
    spec.pop("eval_prompt_count")
    prompts = [c["prompt"] for c in world.captions()]
    spec.update(train_prompts=prompts[:8], eval_prompts=prompts[12:14], device="cpu", torch_threads=1)
    spec.update(overrides)
    return spec


def train_in_process(spec: dict, out: Path) -> None:
    """`python -m diversegrpo.stages.train` in this process (one import of torch/diffusers for many runs)."""
    from diversegrpo.stages import train

    threads = torch.get_num_threads()
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(spec))
    try:
        train.main(["--run-config", str(path), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)


def assert_same_outputs(a: Path, b: Path) -> None:
    """The LoRA bytes are equal; log.parquet and curve.parquet are equal except wall-clock seconds_*."""
    assert (a / LORA).read_bytes() == (b / LORA).read_bytes(), "LoRA safetensors differ"
    for name in ("log.parquet", "curve.parquet"):
        left, right = pd.read_parquet(a / name), pd.read_parquet(b / name)
        timing = [c for c in left.columns if c.startswith("seconds_")]
        pd.testing.assert_frame_equal(left.drop(columns=timing), right.drop(columns=timing), check_exact=True)
        assert list(left.columns) == list(right.columns)


@pytest.fixture(scope="module")
def toy_backbone(tmp_path_factory) -> Path:
    return build_toy_backbone(tmp_path_factory.mktemp("backbone"))


# ----- kill -9 at random points -------------------------------------------------------------------------
def _checkpoint_mtime(out: Path) -> int:
    path = out / "checkpoints/state.pt"
    return path.stat().st_mtime_ns if path.exists() else 0


def _start(config: Path, out: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "diversegrpo.stages.train", "--run-config", str(config), "--out", str(out)],
            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(toy_backbone, tmp_path, capfd):
    spec = toy_run_config(toy_backbone, iterations=24, checkpoint_every=2, eval_every=5)
    reference = tmp_path / "reference"
    train_in_process(spec, reference)
    # Each kill comes at most two iterations (timed as the reference's) after a rerun's first checkpoint, so
    # a rerun advances at most 4 iterations and the third is killed by iteration 12 of 24: never near the
    # end, where a kill during the interpreter's exit finds the finished LoRA written (a fixed 0.4 s delay,
    # 8 iterations of 0.05 s, did so in CI).
    timings = pd.read_parquet(reference / "timings.parquet").drop(columns="iteration")
    seconds_per_iteration = float(timings.sum(axis=1).mean())

    config = tmp_path / "run.json"
    config.write_text(json.dumps(spec))
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    seed = int(os.environ.get("RESUME_TEST_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    delays = [round(rng.uniform(0.0, 2.0) * seconds_per_iteration, 3) for _ in range(3)]
    iterations_at_kill = []
    for delay in delays:
        before = _checkpoint_mtime(out)
        process = _start(config, out, log)
        deadline = time.monotonic() + 60
        while _checkpoint_mtime(out) == before:  # wait for this process's first checkpoint: it is training
            assert process.poll() is None, f"run ended before it was killed (seed {seed}): {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        time.sleep(delay)  # then a random point: mid-iteration, mid-evaluation or mid-checkpoint write
        process.kill()
        assert process.wait() == -9, f"run finished before the kill at +{delay} s (seed {seed}); make it longer"
        iterations_at_kill.append(torch.load(out / "checkpoints/state.pt", weights_only=True)["iteration"])
        assert not (out / LORA).exists(), f"the kill at +{delay} s came after the run finished (seed {seed})"

    assert iterations_at_kill == sorted(iterations_at_kill) and iterations_at_kill[0] >= 2, (iterations_at_kill, seed)
    capfd.readouterr()
    train_in_process(spec, out)  # the last rerun, to the end (in-process: one interpreter start less)
    text = log.read_text() + capfd.readouterr().err
    assert text.count("resumed from") == 3, text[-3000:]  # every rerun resumed, none started over
    assert "ignoring" not in text
    assert_same_outputs(reference, out)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp.")]
    assert not leftovers, leftovers


# ----- what a checkpoint may be resumed by --------------------------------------------------------------------
def _run(spec: dict, out: Path):
    from diversegrpo.stages.train import Run, RunConfig

    return Run(RunConfig.from_dict(spec), out)


def _two_iterations(spec: dict, out: Path):
    run = _run(spec, out)
    run.step()
    run.step()
    run.checkpoint()
    return run


def test_resume_from_same_config(toy_backbone, tmp_path, capfd):
    spec = toy_run_config(toy_backbone, iterations=4)
    first = _two_iterations(spec, tmp_path)
    again = _run(spec, tmp_path)
    assert again.iteration == 2 and pd.DataFrame(again.log).equals(pd.DataFrame(first.log))  # NaN == NaN here
    assert all(torch.equal(a, b) for a, b in zip(first.backbone.lora_parameters(), again.backbone.lora_parameters()))
    assert "resumed from" in capfd.readouterr().err


@pytest.mark.parametrize("change", [
    {"train": {"lr": 7.5e-4}},  # a rate no config uses
    {"method": {"reg_weight": 7.5}},  # a weight no config uses
    {"seed": 1},
    {"train_prompts": ["a red square", "a red disc"]},
    {"iterations": 5},
])
def test_changed_config_never_resumes_a_stale_checkpoint(toy_backbone, tmp_path, capfd, change):
    spec = toy_run_config(toy_backbone, iterations=4)
    _two_iterations(spec, tmp_path)
    changed = C.deep_merge(spec, change)
    run = _run(changed, tmp_path)
    assert run.iteration == 0 and run.log == []
    err = capfd.readouterr().err
    assert "ignoring checkpoint" in err and "different run config" in err and "resumed" not in err
    run.step()
    run.checkpoint()  # the stale checkpoint is replaced by the new run's own
    assert _run(changed, tmp_path).iteration == 1


def test_changed_backbone_weights_never_resume(toy_backbone, tmp_path, capfd):
    """A re-pre-trained toy backbone in the same directory: same run config, different model."""
    import shutil

    from safetensors.torch import load_file, save_file

    backbone = tmp_path / "backbone"
    shutil.copytree(toy_backbone, backbone)
    spec = toy_run_config(backbone, iterations=4)
    _two_iterations(spec, tmp_path / "run")
    weights = load_file(str(backbone / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3
    save_file(weights, str(backbone / "model.safetensors"))
    assert _run(spec, tmp_path / "run").iteration == 0
    assert "ignoring checkpoint" in capfd.readouterr().err


def test_unreadable_checkpoint_is_ignored(toy_backbone, tmp_path, capfd):
    spec = toy_run_config(toy_backbone, iterations=4)
    _two_iterations(spec, tmp_path)
    path = tmp_path / "checkpoints/state.pt"
    path.write_bytes(path.read_bytes()[:1000])  # a truncated file (written by something else than io.py)
    (tmp_path / "checkpoints/.state.pt.abc.tmp").write_bytes(b"half a checkpoint")  # a killed writer's temp
    run = _run(spec, tmp_path)
    assert run.iteration == 0
    assert "ignoring unreadable checkpoint" in capfd.readouterr().err
    assert not (tmp_path / "checkpoints/.state.pt.abc.tmp").exists()

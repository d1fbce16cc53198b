"""Corrupt artifacts, table-driven: a truncated, garbage or empty file that a stage reads fails with a
message that names the file, gives the library's error in one line and says how to rebuild it, instead
of the library's own error (which names no file, or no remedy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

ADVICE = "is unreadable ("
REMEDY = "): delete it and rerun snakemake to rebuild it"

# (id, how the good bytes are spoiled)
CORRUPTIONS = [
    ("truncated", lambda data: data[: len(data) // 2]),
    ("garbage", lambda data: b"\x00\xffnot what you think it is\n" * 8),
    ("empty", lambda data: b""),
]


def _lora_dir(tmp_path: Path, toy_dir: Path) -> Path:
    from diversegrpo.backbones.base import LORA_WEIGHTS, LoraSpec
    from diversegrpo.backbones.toy import ToyBackbone

    backbone = ToyBackbone.load(toy_dir)
    backbone.add_lora(LoraSpec.from_config({"rank": 2, "alpha": 2}, backbone.lora_targets))
    backbone.save_lora(tmp_path / "lora")
    return tmp_path / "lora" / LORA_WEIGHTS


def _load_lora(path: Path, toy_dir: Path) -> None:
    from diversegrpo.backbones.base import LoraSpec
    from diversegrpo.backbones.toy import ToyBackbone

    backbone = ToyBackbone.load(toy_dir)
    backbone.add_lora(LoraSpec.from_config({"rank": 2, "alpha": 2}, backbone.lora_targets))
    backbone.load_lora(path.parent)


def _toy_copy(tmp_path: Path, toy_dir: Path, name: str) -> Path:
    shutil.copytree(toy_dir, tmp_path / "toy")
    return tmp_path / "toy" / name


def _load_toy(path: Path, toy_dir: Path) -> None:
    from diversegrpo.backbones.toy import ToyBackbone

    ToyBackbone.load(path.parent)


def _run_config(tmp_path: Path, toy_dir: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"seed": 0, "train": {"iterations": 2}, "method": {"name": "x"}}, indent=2))
    return path


def _train(path: Path, toy_dir: Path) -> None:
    from diversegrpo.stages import train

    train.main(["--run-config", str(path), "--out", str(path.parent / "run")])


def _parquet(tmp_path: Path, toy_dir: Path) -> Path:
    path = tmp_path / "table.parquet"
    pd.DataFrame({"prompt_id": [0, 1], "prompt": ["a red circle", "a blue square"]}).to_parquet(path)
    return path


def _sample(path: Path, toy_dir: Path) -> None:
    from diversegrpo.stages.sample import SampleSettings, sample_stage

    settings = SampleSettings(backbone={}, rewards={}, sample={"images_per_prompt": 2, "max_prompts": None}, seed=0,
                              device="cpu", torch_threads=1)
    sample_stage(settings, None, {"eval": str(path), "train": str(path)}, str(path.parent / "out.parquet"))


def _evaluate(path: Path, toy_dir: Path) -> None:
    from diversegrpo.stages.evaluate import evaluate_stage

    evaluate_stage(str(path), str(path), {"kind": "toy"}, "toy", {}, str(path.parent / "out.parquet"))


def _report(path: Path, toy_dir: Path) -> None:
    from diversegrpo.stages.report import report_stage

    report_stage([str(path)], [], [], [], [], {}, [0], 1, 1, {})


# (id, make the good artifact -> its path, read it as the pipeline does, what the message calls it and the rule)
ARTIFACTS = [
    ("LoRA adapter", _lora_dir, _load_lora, "LoRA adapter", "(rule train)"),
    ("toy backbone weights", lambda t, d: _toy_copy(t, d, "model.safetensors"), _load_toy,
     "toy backbone weights", "(rule backbone)"),
    ("toy backbone config", lambda t, d: _toy_copy(t, d, "config.json"), _load_toy,
     "toy backbone config", "(rule backbone)"),
    ("run config", _run_config, _train, "run config", "(rule run_config)"),
    ("sample stage's captions", _parquet, _sample, "evaluation captions", "(rule captions)"),
    ("evaluate stage's samples", _parquet, _evaluate, "samples", "(rule sample)"),
    ("report stage's metrics", _parquet, _report, "metrics", "(rule evaluate)"),
]


@pytest.mark.parametrize("corrupt", [c[1] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
@pytest.mark.parametrize("make, read, what, rule", [a[1:] for a in ARTIFACTS], ids=[a[0] for a in ARTIFACTS])
def test_corrupt_artifact_names_the_file_and_the_remedy(tmp_path, tiny_toy_dir, make, read, what, rule, corrupt):
    path = make(tmp_path, tiny_toy_dir)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(Exception) as info:
        read(path, tiny_toy_dir)
    message = str(info.value)
    assert f"{what} {path} {ADVICE}" in message and message.rstrip().endswith(f"{REMEDY} {rule}"), message
    assert "\n" not in message, message


def test_run_config_of_the_wrong_shape_names_the_file(tmp_path, tiny_toy_dir):
    path = tmp_path / "config.json"
    path.write_text("[1, 2, 3]\n")
    with pytest.raises(Exception) as info:
        _train(path, tiny_toy_dir)
    assert f"run config {path} {ADVICE}" in str(info.value) and REMEDY in str(info.value), str(info.value)


def test_a_missing_file_keeps_its_own_error(tmp_path):
    from diversegrpo.io import read_parquet

    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "missing.parquet", "metrics", "evaluate")


# ----- a corrupt run config.json must not cost the trained LoRA beside it --------------------------------------
def test_a_corrupt_run_config_keeps_the_lora(tmp_path):
    """Snakemake would rerun the train job (its config.json input is newer, with another checksum), and
    that deletes the LoRA before the trainer fails on the file: the workflow stops first, naming the file
    and the command that rebuilds only it (tested end to end on the tiny pipeline: the LoRA is kept)."""
    import os
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    for name in ("workflow", "config", "scripts"):
        shutil.copytree(root / name, tmp_path / name)
    shutil.copy(root / "Snakefile", tmp_path)
    shutil.copytree(root / "profiles", tmp_path / "profiles", symlinks=True)  # the default profile's rerun triggers
    run = tmp_path / "results/runs/toy/colour/diverse_grpo/seed0"
    files = {
        "src/diversegrpo/__init__.py": b"",
        "results/captions/train.parquet": b"",
        "results/captions/eval.parquet": b"",
        "results/backbones/toy/model.safetensors": b"",
        f"{run}/lora/pytorch_lora_weights.safetensors": b"trained for days",
        f"{run}/log.parquet": b"",
        f"{run}/curve.parquet": b"",
        f"{run}/config.json": b'{"seed": 0, "tra',
    }
    now = time.time()
    for i, (name, data) in enumerate(files.items()):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mtime = now - 1000 + 50 * (i >= 4) + 100 * name.endswith("config.json")  # inputs, outputs, newer config
        os.utime(path, (mtime, mtime))
    lora = run / "lora/pytorch_lora_weights.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", str(lora.relative_to(tmp_path)), "--configfile",
         "config/tiny.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    config = "results/runs/toy/colour/diverse_grpo/seed0/config.json"
    assert f"{config} is unreadable (JSONDecodeError: " in output, output[-3000:]
    assert f"snakemake {config} --forcerun run_config" in output, output[-3000:]
    assert lora.read_bytes() == b"trained for days"

"""Same config, same seed, same bytes (CPU): see docs/reproducibility.md for what is bit-identical and
what is not (wall-clock `seconds_*` columns; GPU kernels)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from test_resume import LORA, assert_same_outputs, build_toy_backbone, toy_run_config, train_in_process


@pytest.fixture(scope="module")
def toy_backbone(tmp_path_factory):
    return build_toy_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.mark.parametrize("method", ["diverse_grpo", "flow_grpo_kl"])
def test_two_runs_give_identical_artifacts(toy_backbone, tmp_path, method):
    spec = toy_run_config(toy_backbone, method=method, iterations=3, eval_every=2)
    a, b = tmp_path / "a", tmp_path / "b"
    train_in_process(spec, a)
    train_in_process(spec, b)
    assert_same_outputs(a, b)
    # log.parquet and curve.parquet hold no wall-clock time: the files themselves are equal
    for name in ("log.parquet", "curve.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the seconds live apart, in timings.parquet, joined on the iteration
    left, right = pd.read_parquet(a / "timings.parquet"), pd.read_parquet(b / "timings.parquet")
    assert list(left.iteration) == list(right.iteration) == list(pd.read_parquet(a / "log.parquet").iteration)
    assert {"seconds_sample", "seconds_score", "seconds_train"} <= set(left.columns)
    assert not any(c.startswith("seconds_") for c in pd.read_parquet(a / "log.parquet").columns)


def test_another_seed_gives_another_lora(toy_backbone, tmp_path):
    """The check above can fail: a different seed changes the bytes."""
    train_in_process(toy_run_config(toy_backbone, iterations=1, seed=0), tmp_path / "a")
    train_in_process(toy_run_config(toy_backbone, iterations=1, seed=1), tmp_path / "b")
    assert (tmp_path / "a" / LORA).read_bytes() != (tmp_path / "b" / LORA).read_bytes()


def test_pretraining_is_deterministic(tmp_path):
    build_toy_backbone(tmp_path / "a")
    build_toy_backbone(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path):
    """safetensors writes `__metadata__` in hash order; io canonicalises it (diffusers LoRA files hold two keys)."""
    from safetensors.torch import load_file, safe_open

    from diversegrpo.io import save_safetensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.float16)}
    files = set()
    for i in range(8):
        order = ["format", "x", "y", "z"][i % 4:] + ["format", "x", "y", "z"][: i % 4]
        save_safetensors(tensors, tmp_path / "t.safetensors", metadata={k: f"value {k} é" for k in order})
        files.add((tmp_path / "t.safetensors").read_bytes())
    assert len(files) == 1
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert f.metadata() == {k: f"value {k} é" for k in ["format", "x", "y", "z"]}


def test_parquet_bytes_are_a_function_of_the_table(tmp_path):
    from diversegrpo.io import write_parquet

    table = pd.DataFrame({"iteration": [0, 1], "reward_mean": [0.5, float("nan")], "prompt": ["a", "b"]})
    write_parquet(table, tmp_path / "a.parquet")
    write_parquet(table.copy(), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()

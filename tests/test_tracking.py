"""Live monitoring (tracking.py): a run's scalars and evaluation images reach TensorBoard as it goes, a
resumed run shows each step once, W&B is used only when asked for, and tracking never changes a result."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch

from diversegrpo import tracking
from test_resume import assert_same_outputs, build_toy_backbone, toy_run_config, train_in_process


@pytest.fixture(scope="module")
def toy_backbone(tmp_path_factory):
    return build_toy_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(autouse=True)
def default_tracker(monkeypatch):
    """Each test starts from the default (TensorBoard), whatever the shell running the tests set."""
    monkeypatch.delenv(tracking.ENV, raising=False)


def events(directory):
    """{tag: [(step, value), ...]} of the scalars and {tag: [step, ...]} of the images TensorBoard reads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {t: [(e.step, e.value) for e in accumulator.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in accumulator.Images(t)] for t in tags["images"]}
    return scalars, images


def _run(spec, out):
    from diversegrpo.stages.train import Run, RunConfig

    return Run(RunConfig.from_dict(spec), out)


# ----- a run with tracking -----------------------------------------------------------------------------------
def test_tracking_writes_every_numeric_column_and_changes_no_result(toy_backbone, tmp_path, monkeypatch):
    spec = toy_run_config(toy_backbone, iterations=4, eval_every=2, checkpoint_every=2)
    monkeypatch.setenv(tracking.ENV, "none")
    train_in_process(spec, tmp_path / "off")
    monkeypatch.delenv(tracking.ENV)  # the default: TensorBoard
    train_in_process(spec, tmp_path / "on")

    assert_same_outputs(tmp_path / "off", tmp_path / "on")  # LoRA bytes, log and curve: tracking is no result
    for name in ("log.parquet", "curve.parquet"):
        assert (tmp_path / "off" / name).read_bytes() == (tmp_path / "on" / name).read_bytes(), name
    assert not (tmp_path / "off" / "tensorboard").exists()

    scalars, images = events(tmp_path / "on" / "tensorboard")
    log = pd.concat([pd.read_parquet(tmp_path / "on" / f) for f in ("log.parquet", "timings.parquet")], axis=1)
    log = log.loc[:, ~log.columns.duplicated()]
    columns = [c for c in log.columns if c != "iteration" and pd.api.types.is_numeric_dtype(log[c])]
    assert {"reward_mean", "diversity", "regularizer", "clipfrac", "seconds_train"} <= set(columns)
    for column in columns:  # each iteration's every numeric column, at its iteration, once
        assert scalars[f"train/{column}"] == [(int(i), pytest.approx(float(v), rel=1e-6, nan_ok=True))
                                              for i, v in zip(log.iteration, log[column])], column
    curve = pd.read_parquet(tmp_path / "on" / "curve.parquet")
    assert curve.iteration.tolist() == [0, 2, 4]
    for column in [c for c in curve.columns if c != "iteration"]:
        assert scalars[f"eval/{column}"] == [(int(i), pytest.approx(float(v), rel=1e-6))
                                             for i, v in zip(curve.iteration, curve[column])], column
    # one grid per evaluation: 2 eval prompts (rows) x 4 images, toy tiles enlarged to 128 px, 2 px gaps
    assert images == {"eval/samples": [(s, 4 * 128 + 3 * 2, 2 * 128 + 2) for s in (0, 2, 4)]}


def test_a_resumed_run_shows_each_step_once(toy_backbone, tmp_path):
    """A run stopped after iteration 3 with its checkpoint at 2: the rerun redoes iteration 2 and on. Its
    events purge the first attempt's steps >= 2, and the evaluation at 2 (from the checkpoint) is kept."""
    spec = toy_run_config(toy_backbone, iterations=5, eval_every=2, checkpoint_every=2)
    out = tmp_path / "run"
    first = _run(spec, out)
    first.evaluate_on_main()
    for _ in range(2):
        first.step()
    first.evaluate_on_main()
    first.checkpoint()
    first.step()
    first.step()  # iterations 2 and 3: discarded by the resume, their events already on disk
    first.tracker.close()
    before, _ = events(out / "tensorboard")
    assert [s for s, _ in before["train/reward_mean"]] == [0, 1, 2, 3]

    # TensorBoard reads event files in name order, events.out.tfevents.<unix second>.<host>.<pid>.<writer count>:
    # a real resume (a new process, later) sorts after the stopped attempt; in this process, within the same
    # second, the writer count decides, and "10" sorts before "9" once earlier tests opened writers.
    time.sleep(max(0.0, 1.05 - (time.time() % 1)))
    train_in_process(spec, out)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # two writers, one history
    scalars, images = events(out / "tensorboard")
    log, curve = pd.read_parquet(out / "log.parquet"), pd.read_parquet(out / "curve.parquet")
    assert scalars["train/reward_mean"] == [(i, pytest.approx(v, rel=1e-6))
                                            for i, v in zip(log.iteration, log.reward_mean)]
    assert [s for s, _ in scalars["train/reward_mean"]] == [0, 1, 2, 3, 4]
    assert [s for s, _ in scalars["eval/diversity"]] == curve.iteration.tolist() == [0, 2, 4, 5]
    assert [s for s, *_ in images["eval/samples"]] == [0, 4, 5]  # the checkpoint holds no images of step 2


def test_only_the_main_process_tracks(tmp_path):
    tracker = tracking.open_tracker(tmp_path, main=False)
    tracker.log_row("train", {"iteration": 0, "reward_mean": 1.0})
    tracker.close()
    assert type(tracker) is tracking.Tracker and not any(tmp_path.iterdir())


# ----- choosing a tracker ------------------------------------------------------------------------------------
def test_the_environment_variable_chooses(monkeypatch):
    assert tracking.chosen({}) == ["tensorboard"]
    assert tracking.chosen({tracking.ENV: "none"}) == []
    assert tracking.chosen({tracking.ENV: " TensorBoard "}) == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker.*'mlflow'.*tensorboard, wandb, none"):
        tracking.chosen({tracking.ENV: "mlflow"})
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        tracking.chosen({tracking.ENV: "none,tensorboard"})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"asks for wandb tracking but the 'wandb' package is not installed"):
        tracking.chosen({tracking.ENV: "tensorboard,wandb"})


def test_a_bad_tracker_fails_before_any_work(toy_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV, "tensorbord")
    from diversegrpo.stages import train

    monkeypatch.setattr(train, "build_backbone", lambda *a: pytest.fail("the backbone was built"))
    with pytest.raises(ValueError, match="tensorbord"):
        _run(toy_run_config(toy_backbone, iterations=1), tmp_path)


class FakeWandb(types.ModuleType):
    """What tracking.py calls of wandb, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append((step, data))

            def finish(self):
                fake.finished += 1

        self._run = Run

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self._run()

    def Image(self, array, caption):  # noqa: N802 (wandb's name)
        return ("image", array.shape, caption)


def test_wandb_when_asked_one_run_across_resumes(toy_backbone, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv(tracking.ENV, "wandb")
    spec = toy_run_config(toy_backbone, iterations=3, eval_every=2, checkpoint_every=2)
    out = tmp_path / "toy" / "colour" / "diverse_grpo"
    first = _run(spec, out)
    first.evaluate_on_main()
    first.step()
    first.step()
    first.evaluate_on_main()
    first.checkpoint()
    train_in_process(spec, out)  # resumes at 2, ends at 3

    assert not (out / "tensorboard").exists()  # wandb alone, as asked
    assert len(fake.inits) == 2 and fake.finished == 1
    assert fake.inits[0]["id"] == fake.inits[1]["id"] and fake.inits[1]["resume"] == "allow"
    assert fake.inits[0]["name"] == "toy/colour/diverse_grpo" and fake.inits[0]["config"]["iterations"] == 3
    assert "train_prompts" not in fake.inits[0]["config"]
    train = [step for step, data in fake.logged if "train/reward_mean" in data]
    assert train == [0, 1, 2]
    log = pd.read_parquet(out / "log.parquet")
    assert [d["train/diversity"] for _, d in fake.logged if "train/diversity" in d] == log.diversity.tolist()
    assert [(s, d["eval/samples"][0]) for s, d in fake.logged if "eval/samples" in d] == [(0, "image"), (2, "image"),
                                                                                        (3, "image")]
    # the resumed run logs the checkpoint's evaluation at 2 again (W&B ignores a step it has), then 3
    assert [s for s, d in fake.logged if "eval/diversity" in d] == [0, 2, 2, 3]
    # a fresh run in the same folder is a new W&B run
    (out / "checkpoints/state.pt").unlink()
    _run(spec, out).step()
    assert fake.inits[2]["id"] != fake.inits[0]["id"]


# ----- the pieces ----------------------------------------------------------------------------------------------
def test_a_failing_backend_stops_tracking_not_the_run(capfd):
    class Broken(tracking.Tracker):
        calls = 0

        def log_row(self, section, row):
            Broken.calls += 1
            raise OSError("No space left on device")

    tracker = tracking.Guarded(Broken(), "tensorboard")
    for i in range(3):
        tracker.log_row("train", {"iteration": i, "x": 1.0})
    tracker.close()
    err = capfd.readouterr().err
    assert Broken.calls == 1 and err.count("tensorboard tracking stopped (OSError: No space left on device)") == 1


def test_the_grid_shows_the_first_prompts_and_images_in_place():
    per_prompt, prompts = 5, 6
    images = torch.arange(prompts * per_prompt, dtype=torch.float32).div(255)[:, None, None, None].expand(-1, 3, 8, 8)
    out = tracking.grid(images, per_prompt)
    tile, pad = 8 * 16, 2  # 8-px images are enlarged 16x to reach 128
    assert out.shape == (4 * (tile + pad) - pad, 4 * (tile + pad) - pad, 3) and out.dtype == np.uint8
    for r in range(4):
        for c in range(4):
            assert (out[r * (tile + pad): r * (tile + pad) + tile, c * (tile + pad): c * (tile + pad) + tile]
                    == r * per_prompt + c).all(), (r, c)
    assert (out[tile: tile + pad] == 255).all()  # the gap between rows
    big = tracking.grid(torch.rand(2, 3, 1024, 512, generator=torch.Generator().manual_seed(0)), per_prompt=1)
    assert big.shape == (2 * 256 + 2, 128, 3)  # paper images shrunk to 256 px, aspect kept


def test_tracking_draws_no_random_number_and_changes_no_tensor(tmp_path):
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    copy = images.clone()
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    tracker = tracking.open_tracker(tmp_path, start=3, curve=[{"iteration": 3, "diversity": 0.5}])
    tracker.log_row("train", {"iteration": 3, "reward_mean": torch.tensor(0.25), "note": "text", "n": 2})
    tracker.log_images(4, images, 4, ["a"] * 4 + ["b"] * 4)
    tracker.log_row("eval", {"iteration": 4, "diversity": 0.75})
    tracker.close()
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    assert torch.equal(images, copy)
    scalars, images_seen = events(tmp_path / "tensorboard")
    assert scalars == {"train/reward_mean": [(3, 0.25)], "train/n": [(3, 2.0)],
                       "eval/diversity": [(3, 0.5), (4, 0.75)]}
    assert images_seen == {"eval/samples": [(4, 4 * 128 + 6, 2 * 128 + 2)]}

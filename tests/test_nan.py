"""Non-finite numbers stop a run loudly: a NaN / inf reward or loss ends the iteration with an error that
names what went wrong; the last good checkpoint stays as it was; no LoRA with a NaN is ever written."""

from __future__ import annotations

import pytest
import torch

from test_resume import LORA, build_toy_backbone, toy_run_config

BAD_ITERATION = 2


@pytest.fixture(scope="module")
def toy_backbone(tmp_path_factory):
    return build_toy_backbone(tmp_path_factory.mktemp("backbone"))


def _run(spec, out):
    from diversegrpo.stages.train import Run, RunConfig

    return Run(RunConfig.from_dict(spec), out)


def _spec(toy_backbone):
    return toy_run_config(toy_backbone, iterations=4, checkpoint_every=1, eval_every=10)


def _poison_reward(run, value: float, sample: int = 3):
    """The reward of one training sample becomes `value` at BAD_ITERATION (evaluations are untouched)."""
    reward, batch = run.reward, run.cfg.train.prompts_per_iteration * run.cfg.train.group_size
    seen = {}

    def poisoned(images, prompts):
        out = reward(images, prompts)
        if run.iteration == BAD_ITERATION and len(prompts) == batch:
            out = out.clone()
            out[sample] = value
            seen["prompt"] = prompts[sample]
        return out

    run.reward = poisoned
    return seen


def _assert_last_good_checkpoint_kept(run, out, iteration=BAD_ITERATION):
    state = torch.load(out / "checkpoints/state.pt", weights_only=True)
    assert state["iteration"] == iteration
    assert len(state["log"]) == iteration
    assert all(torch.isfinite(v).all() for v in state["lora"].values())
    assert not (out / LORA).exists() and not (out / "log.parquet").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_reward_names_the_sample_and_its_prompt(toy_backbone, tmp_path, value):
    run = _run(_spec(toy_backbone), tmp_path)
    seen = _poison_reward(run, value)
    with pytest.raises(FloatingPointError) as error:
        run.train()
    message = str(error.value)
    assert "non-finite reward for 1 sample(s)" in message and f"#3 {seen['prompt']!r}" in message, message
    assert run.iteration == BAD_ITERATION  # the iteration stopped: no optimizer step, no log row
    _assert_last_good_checkpoint_kept(run, tmp_path)


def test_a_failed_run_resumes_from_its_last_good_checkpoint(toy_backbone, tmp_path):
    spec = _spec(toy_backbone)
    run = _run(spec, tmp_path)
    _poison_reward(run, float("nan"))
    with pytest.raises(FloatingPointError):
        run.train()
    before = (tmp_path / "checkpoints/state.pt").read_bytes()
    again = _run(spec, tmp_path)  # e.g. after fixing a flaky reward server
    assert again.iteration == BAD_ITERATION
    again.train()
    again.finish()
    assert (tmp_path / LORA).exists() and before != (tmp_path / "checkpoints/state.pt").read_bytes()


def test_non_finite_loss_stops_the_iteration(toy_backbone, tmp_path, monkeypatch):
    from diversegrpo import regularizers

    run = _run(_spec(toy_backbone), tmp_path)
    penalty = regularizers.penalty

    def poisoned(*args, **kwargs):
        out = penalty(*args, **kwargs)
        return out * float("nan") if run.iteration == BAD_ITERATION else out

    monkeypatch.setattr(regularizers, "penalty", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        run.train()
    _assert_last_good_checkpoint_kept(run, tmp_path)
    assert all(torch.isfinite(p).all() for p in run.backbone.lora_parameters())  # no step was taken


def test_nan_weights_are_never_checkpointed_nor_saved(toy_backbone, tmp_path):
    """A NaN that reaches the LoRA (e.g. through a NaN gradient) is refused by checkpoint and save_lora."""
    run = _run(_spec(toy_backbone), tmp_path)
    step = run.optimizer.step

    def poisoned_step(*args, **kwargs):
        out = step(*args, **kwargs)
        if run.iteration == BAD_ITERATION:
            with torch.no_grad():
                run.backbone.lora_parameters()[0].view(-1)[0] = float("nan")
        return out

    run.optimizer.step = poisoned_step
    with pytest.raises(FloatingPointError, match="non-finite LoRA / optimizer state"):
        run.train()  # the checkpoint after the bad iteration refuses
    _assert_last_good_checkpoint_kept(run, tmp_path)
    with pytest.raises(FloatingPointError, match="refusing to write a LoRA with non-finite weights"):
        run.backbone.save_lora(tmp_path / "lora")
    assert not (tmp_path / LORA).exists()
    assert not list((tmp_path / "lora").glob(".tmp.*"))


def test_nan_optimizer_state_is_never_checkpointed(toy_backbone, tmp_path):
    run = _run(_spec(toy_backbone), tmp_path)
    run.step()
    run.checkpoint()
    good = (tmp_path / "checkpoints/state.pt").read_bytes()
    state = next(iter(run.optimizer.state.values()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"optimizer\.\d+\.exp_avg_sq"):
        run.checkpoint()
    assert (tmp_path / "checkpoints/state.pt").read_bytes() == good

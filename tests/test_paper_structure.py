"""The paper world's iteration structure on the toy MMDiT: micro-batches change memory, never the algorithm;
the EMA of the LoRA is Flow-GRPO's, evaluated, saved and resumed; device placement is checked on entry;
a diffusers that cannot save the adapter is refused before training."""

import copy

import pytest
import torch

from diversegrpo.ema import EMA, EmaSettings, ema_decay
from diversegrpo.features.toy import PooledPixels
from diversegrpo.grpo import group_advantages
from diversegrpo.rewards.toy import ColourReward
from diversegrpo.sampling import sample_rollout
from diversegrpo.trainer import MethodSettings, TrainSettings, score, train_on_rollout
from test_resume import LORA, _run, toy_backbone, toy_run_config, train_in_process  # noqa: F401 (fixture)
from test_trainer import lora_backbone

PROMPTS = ["a red disc", "a green frame", "a blue cross"]
SA_REG = MethodSettings(regularizer="sa_reg", reg_weight=1.0, sa_steps=2)


def _rollout(backbone, micro_batch=None, seed=1):
    return sample_rollout(
        backbone, PROMPTS, 4, 3, 1.5, 0.7, torch.Generator().manual_seed(seed), micro_batch=micro_batch
    )


def _gradients(tiny_toy_dir, micro_batch):
    """The LoRA gradients of one optimizer step over the whole rollout, with the optimizer step skipped."""
    torch.manual_seed(0)  # the same LoRA init every call
    backbone = lora_backbone(tiny_toy_dir)
    rollout = _rollout(backbone)
    advantages = group_advantages(ColourReward()(rollout.images, rollout.prompts), rollout.group_ids)
    settings = TrainSettings(train_steps=3, timestep_fraction=1.0, guidance_scale=1.5, noise_level=0.7,
                             sde_type="sde", minibatches=1, micro_batch=micro_batch)  # as _rollout sampled

    class Frozen(torch.optim.SGD):  # keeps the gradients for inspection
        def zero_grad(self, set_to_none=True):
            pass

    optimizer = Frozen(backbone.lora_parameters(), lr=0.0)
    stats = train_on_rollout(
        backbone, optimizer, rollout, advantages, SA_REG, settings, torch.Generator().manual_seed(2)
    )
    return [p.grad.clone() for p in backbone.lora_parameters()], stats


def test_two_micro_batch_sizes_give_the_same_gradients(tiny_toy_dir):
    """12 samples in one forward, in micro-batches of 5 (5 + 5 + 2: unequal) and of 1: one gradient."""
    whole, stats = _gradients(tiny_toy_dir, None)
    for micro_batch in (5, 1):
        grads, micro_stats = _gradients(tiny_toy_dir, micro_batch)
        for a, b in zip(whole, grads):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        assert micro_stats.policy_loss == pytest.approx(stats.policy_loss, abs=1e-6)
        assert micro_stats.regularizer == pytest.approx(stats.regularizer, rel=1e-4)
        assert micro_stats.grad_norm == pytest.approx(stats.grad_norm, rel=1e-4)
    assert any(float(g.abs().sum()) > 0 for g in whole)


def test_rollouts_do_not_depend_on_the_micro_batch(tiny_toy_dir):
    backbone = lora_backbone(tiny_toy_dir)
    decoded = []
    original = backbone.decode
    backbone.decode = lambda x: decoded.append(x.shape[0]) or original(x)
    whole, chunked = _rollout(backbone), _rollout(backbone, micro_batch=5)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.log_probs, whole.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.images, whole.images, rtol=1e-5, atol=1e-6)
    assert decoded == [12, 5, 5, 2]  # the decoder saw at most a micro-batch at a time


def test_tensors_on_another_device_are_refused_on_entry(tiny_toy_dir):
    """On a GPU a CPU `advantages` indexed with a CUDA index fails mid-iteration; the guard names it first."""
    backbone = lora_backbone(tiny_toy_dir)
    rollout = _rollout(backbone)
    settings = TrainSettings(train_steps=3, guidance_scale=1.5)
    optimizer = torch.optim.SGD(backbone.lora_parameters(), lr=0.0)
    with pytest.raises(ValueError, match="advantages.*meta"):
        train_on_rollout(backbone, optimizer, rollout, torch.zeros(12, device="meta"), SA_REG, settings,
                         torch.Generator().manual_seed(0))


def test_diverse_grpo_at_beta_0_scores_like_sa_reg(tiny_toy_dir):
    """Through the trainer's own scoring: the creative mix at beta 0 leaves the rewards the advantages see equal
    to the quality, under the batch std (the paper world's) and the group std."""
    from diversegrpo.trainer import CreativeSettings

    backbone = lora_backbone(tiny_toy_dir)
    rollout = _rollout(backbone)
    for global_std in (True, False):
        plain = score(rollout, ColourReward(), PooledPixels(), None, global_std=global_std)
        zero = score(rollout, ColourReward(), PooledPixels(), CreativeSettings(beta=0.0, k=2), global_std=global_std)
        assert torch.equal(zero.rewards, plain.rewards)
        one = score(rollout, ColourReward(), PooledPixels(), CreativeSettings(beta=1.0, k=2), global_std=global_std)
        assert not torch.equal(one.rewards, plain.rewards)


def test_the_median_gate_takes_the_bonus_from_the_lower_half_of_each_group(tiny_toy_dir):
    """Through the trainer's scoring, raw mix: an image below its group's median quality earns Q + beta (E = 1),
    the others Q + beta E as without the gate; the bonus recorded is E, before the gate."""
    from diversegrpo.trainer import CreativeSettings

    rollout = _rollout(lora_backbone(tiny_toy_dir))
    paper = score(rollout, ColourReward(), PooledPixels(), CreativeSettings(beta=0.5, mix="raw", k=2, gate="none"))
    gated = score(rollout, ColourReward(), PooledPixels(), CreativeSettings(beta=0.5, mix="raw", k=2, gate="median"))
    assert torch.equal(gated.bonus, paper.bonus) and torch.equal(gated.quality, paper.quality)
    for g in torch.unique(rollout.group_ids):
        members = rollout.group_ids == g
        q = paper.quality[members]
        below = q < q.quantile(0.5)
        assert 0 < int(below.sum()) < len(q)
        torch.testing.assert_close(gated.rewards[members][below], q[below] + 0.5)
        torch.testing.assert_close(gated.rewards[members][~below], paper.rewards[members][~below])


# ----- EMA --------------------------------------------------------------------------------------------------
def test_ema_follows_flow_grpos_schedule():
    """decay min((1 + n) / (10 + n), 0.9) at optimizer step n, an update every 8th step ((n + 1) % 8 == 0),
    written out by hand for 24 steps of a parameter that is set to n at step n."""
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], EmaSettings(decay=0.9, every=8))
    expected = torch.zeros(3)
    for n in range(1, 25):
        p.data.fill_(float(n))
        ema.update([p])
        if (n + 1) % 8 == 0:
            d = min((1 + n) / (10 + n), 0.9)
            expected = d * expected + (1 - d) * n
    torch.testing.assert_close(ema.shadow[0], expected)
    assert ema_decay(7, 0.9) == pytest.approx(8 / 17) and ema_decay(1000, 0.9) == 0.9
    with ema.swapped_in([p]):
        torch.testing.assert_close(p.data, expected)
    assert float(p.data[0]) == 24.0  # restored


def test_ema_run_saves_the_average_and_resumes_bit_identically(toy_backbone, tmp_path):
    from safetensors.torch import load_file

    spec = toy_run_config(toy_backbone, iterations=4, checkpoint_every=2, eval_every=2,
                          train={**toy_run_config(toy_backbone)["train"], "ema": {"decay": 0.9, "every": 1}})
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_in_process(copy.deepcopy(spec), whole)
    run = _run(copy.deepcopy(spec), parts)  # two iterations, a checkpoint, then a fresh process resumes
    run.step()
    run.step()
    run.checkpoint()
    resumed = _run(copy.deepcopy(spec), parts)
    assert resumed.iteration == 2 and resumed.ema.step == run.ema.step > 0
    resumed.train()
    resumed.finish()
    assert (whole / LORA).read_bytes() == (parts / LORA).read_bytes()
    saved = load_file(str(parts / LORA))
    raw = {k: v.clone() for k, v in resumed.backbone.lora_state_dict().items()}  # on CPU: views of the weights
    with resumed.published():
        average = {k: v.clone() for k, v in resumed.backbone.lora_state_dict().items()}
    assert all(torch.equal(saved[f"transformer.{k}"], v) for k, v in average.items())  # the EMA is what is saved
    assert any(not torch.equal(raw[k], average[k]) for k in raw)


# ----- diffusers too old to save the adapter -------------------------------------------------------------------
def test_a_diffusers_without_adapter_metadata_is_refused_before_training(tiny_toy_dir):
    backbone = lora_backbone(tiny_toy_dir)
    backbone.check_lora_saving()  # the installed diffusers can

    class Diffusers033:  # save_lora_weights as diffusers 0.33 declares it
        @classmethod
        def save_lora_weights(cls, save_directory, transformer_lora_layers=None, is_main_process=True,
                              weight_name=None, save_function=None, safe_serialization=True):
            raise AssertionError("never reached")

    backbone.lora_pipeline_class = Diffusers033
    with pytest.raises(ImportError, match=r"diffusers>=0\.34"):
        backbone.check_lora_saving()


def test_the_train_log_counts_truncated_prompts(toy_backbone, tmp_path):
    """The paper adapters count the prompts their tokenizers cut (backbone.truncated_prompts); each log row
    carries the running totals, so a run on long prompts says how many were truncated."""
    run = _run(toy_run_config(toy_backbone, iterations=2), tmp_path)
    run.step()
    assert not any(k.startswith("truncated_") for k in run.log[-1])  # the toy world truncates nothing
    run.backbone.truncated_prompts = {"clip_l": 3, "t5": 1}
    run.step()
    assert run.log[-1]["truncated_clip_l"] == 3 and run.log[-1]["truncated_t5"] == 1

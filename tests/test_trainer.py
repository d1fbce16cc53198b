"""One GRPO iteration on the tiny toy MMDiT: what changes, what must not, and the adapter round trip."""

import pytest
import torch

from diversegrpo.backbones.base import LORA_WEIGHTS, LoraSpec
from diversegrpo.backbones.toy import ToyBackbone
from diversegrpo.features.toy import PooledPixels
from diversegrpo.rewards.toy import ColourReward
from diversegrpo.sampling import sample_rollout
from diversegrpo.trainer import CreativeSettings, MethodSettings, TrainSettings, check_finite, grpo_iteration

METHODS = {
    "flow_grpo": MethodSettings(regularizer="none"),
    "flow_grpo_kl": MethodSettings(regularizer="kl", reg_weight=0.01),
    "sa_reg": MethodSettings(regularizer="sa_reg", reg_weight=10.0, sa_steps=1),
    "diverse_grpo": MethodSettings(regularizer="sa_reg", reg_weight=10.0, sa_steps=1, creative=CreativeSettings(k=2)),
}
# the rest as config/config.yaml sets it (the toy backbone's CPS rollouts); every step trained but the last,
# which CPS draws without noise (config refuses training it)
SETTINGS = TrainSettings(
    prompts_per_iteration=2, group_size=4, lr=1e-2, train_steps=3, timestep_fraction=0.99, guidance_scale=1.5,
    minibatches=2,
)


def lora_backbone(path) -> ToyBackbone:
    backbone = ToyBackbone.load(path)
    backbone.add_lora(LoraSpec(rank=4, alpha=8, target_modules=backbone.lora_targets))
    return backbone


def velocity(backbone, seed=0):
    cond = backbone.encode_prompts(["a red disc", "a blue cross"])
    x = backbone.initial_noise(2, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return backbone.velocity(x, torch.tensor([0.7, 0.4]), cond, 1.5)


@pytest.mark.parametrize("method", list(METHODS))
def test_one_iteration_changes_only_lora_and_leaves_the_reference_alone(tiny_toy_dir, method):
    backbone = lora_backbone(tiny_toy_dir)
    before = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters()}
    with backbone.adapter_disabled():
        reference_before = velocity(backbone)
    optimizer = torch.optim.AdamW(backbone.lora_parameters(), lr=SETTINGS.lr)
    log = grpo_iteration(backbone, optimizer, ["a red disc", "a green frame"], ColourReward(), PooledPixels(),
                         METHODS[method], SETTINGS, torch.Generator().manual_seed(0))
    changed = {n for n, p in backbone.transformer.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    with backbone.adapter_disabled():
        torch.testing.assert_close(velocity(backbone), reference_before, rtol=0, atol=0)
    assert (log.stats.regularizer > 0) == (METHODS[method].regularizer != "none")
    assert (log.bonus_mean == log.bonus_mean) == (METHODS[method].creative is not None)  # nan without creative
    assert 0.0 <= log.stats.clipfrac <= 1.0 and log.seconds["train"] > 0


def test_rollout_log_probs_are_reproduced_by_the_train_pass_on_policy(tiny_toy_dir):
    """Before any update the rescored log-probs equal the sampling ones: ratio 1, clipfrac 0."""
    from diversegrpo.sde import sde_step

    backbone = lora_backbone(tiny_toy_dir)
    rollout = sample_rollout(backbone, ["a red disc"], 3, 4, 1.5, 0.7, torch.Generator().manual_seed(1))
    assert rollout.latents.shape == (5, 3, 3, 16, 16) and rollout.log_probs.shape == (4, 3)
    for j in range(4):
        with torch.no_grad():
            v = backbone.velocity(rollout.latents[j], rollout.sigmas[j], rollout.cond, 1.5)
        step = sde_step(
            rollout.latents[j], v, rollout.sigmas[j], rollout.sigmas[j + 1], 0.7, prev_sample=rollout.latents[j + 1]
        )
        torch.testing.assert_close(step.log_prob, rollout.log_probs[j], rtol=0, atol=1e-5)


def test_saved_adapter_loads_in_diffusers_and_reproduces_the_trained_model(tiny_toy_dir, tmp_path):
    backbone = lora_backbone(tiny_toy_dir)
    with torch.no_grad():
        for p in backbone.lora_parameters():
            p.add_(0.05 * torch.randn_like(p))
    trained = velocity(backbone)
    backbone.save_lora(tmp_path / "lora")

    fresh = ToyBackbone.load(tiny_toy_dir)
    torch.testing.assert_close(velocity(fresh), velocity(fresh))
    assert not torch.allclose(velocity(fresh), trained, atol=1e-4)
    # diffusers' own loader, as `pipe.load_lora_weights(dir)` calls it for the transformer
    fresh.transformer.load_lora_adapter(str(tmp_path / "lora"), prefix="transformer", weight_name=LORA_WEIGHTS)
    torch.testing.assert_close(velocity(fresh), trained, rtol=1e-5, atol=1e-5)

    ours = lora_backbone(tiny_toy_dir)
    ours.load_lora(tmp_path / "lora")
    torch.testing.assert_close(velocity(ours), trained, rtol=1e-5, atol=1e-5)


def test_non_finite_reward_stops_the_iteration_naming_the_prompt(tiny_toy_dir):
    backbone = lora_backbone(tiny_toy_dir)

    def broken(images, prompts):
        r = torch.zeros(len(prompts))
        r[5] = float("nan")
        return r

    optimizer = torch.optim.AdamW(backbone.lora_parameters())
    with pytest.raises(FloatingPointError, match=r"#5 'a green frame'"):
        grpo_iteration(backbone, optimizer, ["a red disc", "a green frame"], broken, PooledPixels(),
                       METHODS["flow_grpo"], SETTINGS, torch.Generator().manual_seed(0))


def test_non_finite_gradient_norm_takes_no_optimizer_step_and_names_the_minibatch(tiny_toy_dir):
    backbone = lora_backbone(tiny_toy_dir)
    before = [p.detach().clone() for p in backbone.lora_parameters()]
    infinite = torch.tensor(float("inf"))
    for p in backbone.lora_parameters():  # every gradient infinite: the clipped norm is too
        p.register_hook(lambda grad: grad * infinite)
    optimizer = torch.optim.AdamW(backbone.lora_parameters(), lr=1.0)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \(no optimizer step taken\) for 4 sample"):
        grpo_iteration(backbone, optimizer, ["a red disc", "a green frame"], ColourReward(), PooledPixels(),
                       METHODS["flow_grpo"], SETTINGS, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, b) for p, b in zip(backbone.lora_parameters(), before))


PROMPTS = ["p0", "p1", "p2", "p3"]


def test_check_finite_names_the_samples_to_blame():
    check_finite("reward", torch.zeros(4), PROMPTS)  # finite: nothing to say
    check_finite("loss", 1.5, PROMPTS, [2, 3])
    with pytest.raises(FloatingPointError, match=r"^non-finite reward for 2 sample\(s\): #1 'p1', #3 'p3'$"):
        check_finite("reward", torch.tensor([0.0, float("nan"), 1.0, -float("inf")]), PROMPTS)
    # one number per sample of a chunk: the chunk's own indices into the batch
    with pytest.raises(FloatingPointError, match=r"for 1 sample\(s\): #2 'p2'$"):
        check_finite("loss terms", torch.tensor([float("nan"), 0.0]), PROMPTS, [2, 0])
    # one number for them all (a loss, a gradient norm): each is named
    with pytest.raises(FloatingPointError, match=r"^non-finite gradient norm for 2 sample\(s\): #3 'p3', #0 'p0'$"):
        check_finite("gradient norm", float("inf"), PROMPTS, [3, 0])
    with pytest.raises(FloatingPointError, match=r"for 12 sample\(s\): #0 'x', .*#7 'x', \.\.\.$"):
        check_finite("reward", torch.full((12,), float("nan")), ["x"] * 12)

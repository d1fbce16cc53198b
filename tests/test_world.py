"""The toy world: rendering, labelling by construction, rewards and features."""

import numpy as np
import pytest
import torch

from diversegrpo.creative import cosine_distances
from diversegrpo.features.toy import PooledPixels
from diversegrpo.rewards.toy import ColourReward, ContrastReward, OracleReward
from diversegrpo.worlds import toy as world


def test_labeller_recovers_every_rendered_mode_colour_and_shape():
    prompts = [c["prompt"] for c in world.captions()]
    images, modes = world.sample_images(prompts * 4, np.random.default_rng(0))
    labels = world.label(images, prompts * 4)
    assert labels.valid.all()
    np.testing.assert_array_equal(labels.mode, modes)


def test_labeller_rejects_wrong_colour_shape_and_empty_images():
    image = torch.from_numpy(world.render("red", "disc", 2))[None]
    assert not world.label(image, ["a blue disc"]).colour_ok[0]
    assert not world.label(image, ["a red frame"]).shape_ok[0]
    empty = torch.from_numpy(world.render("red", "disc", 1))[None]
    empty[:, :, 2:14, 2:14] = torch.tensor(world.TINTS["teal"])[:, None, None]  # the disc painted over
    labels = world.label(empty, ["a red disc"])
    assert labels.mode[0] == -1 and not labels.valid[0]
    disc = torch.from_numpy(world.render("red", "disc", 0))[None]
    between = (torch.tensor(world.TINTS["black"]) + torch.tensor(world.TINTS["olive"])) / 2
    muddled = torch.where(world.foreground(disc)[:, None], disc, between[:, None, None])  # no tint's background
    labels = world.label(muddled, ["a red disc"])
    assert labels.colour_ok[0] and labels.shape_ok[0] and labels.mode[0] == -1 and not labels.valid[0]


def test_hazy_pre_training_images_are_invalid_score_lower_and_come_in_their_share():
    prompts = [c["prompt"] for c in world.captions()] * 128
    clean, modes = world.sample_images(prompts, np.random.default_rng(0))
    hazy, hazy_modes = world.sample_images(prompts, np.random.default_rng(0), hazy_share=1.0)
    np.testing.assert_array_equal(modes, hazy_modes)  # the haze is drawn after the modes and offsets
    assert not world.label(hazy, prompts).valid.any()  # no clean tint behind the veil
    for reward in (ColourReward(), ContrastReward()):
        scores, clean_scores = reward(hazy, prompts), reward(clean, prompts)
        assert (scores < clean_scores + 0.01).all() and scores.mean() < clean_scores.mean() - 0.4
    mixed, _ = world.sample_images(prompts, np.random.default_rng(1), hazy_share=world.HAZY_SHARE)
    assert 1 - world.label(mixed, prompts).valid.mean() == pytest.approx(world.HAZY_SHARE, abs=0.03)
    assert torch.equal(world.ToyWorld().sample_images(prompts, np.random.default_rng(1)), mixed)


def test_dim_world_darkens_shapes_only_and_its_labeller_rejects_them():
    prompts = [c["prompt"] for c in world.captions()] * 128
    clean, modes = world.sample_images(prompts, np.random.default_rng(0))
    dim, dim_modes = world.sample_images(prompts, np.random.default_rng(0), dim_share=1.0)
    np.testing.assert_array_equal(modes, dim_modes)  # the dimming is drawn after the modes and offsets
    shape = world.foreground(clean)  # (B, H, W): the clean shapes' pixels
    assert torch.equal(dim.permute(0, 2, 3, 1)[~shape], clean.permute(0, 2, 3, 1)[~shape])  # backgrounds untouched
    ratio = (dim * shape[:, None]).sum(dim=(1, 2, 3)) / (clean * shape[:, None]).sum(dim=(1, 2, 3))  # (B,) brightness
    assert ratio.min() >= 1 - world.DIM[1] - 1e-6 and ratio.max() <= 1 - world.DIM[0] + 1e-6
    dim_world = world.ToyDimWorld()
    assert dim_world.label(clean, prompts).valid.all()  # a clean shape keeps its full colour
    assert not dim_world.label(dim, prompts).valid.any()
    assert world.label(dim, prompts).valid.mean() > 0.3  # the toy world's labeller alone passes many of them
    for reward in (ColourReward(), ContrastReward()):
        scores, clean_scores = reward(dim, prompts), reward(clean, prompts)
        assert (scores < clean_scores + 0.01).all() and scores.mean() < clean_scores.mean() - 0.6
    mixed = dim_world.sample_images(prompts, np.random.default_rng(1))
    assert 1 - dim_world.label(mixed, prompts).valid.mean() == pytest.approx(world.DIM_SHARE, abs=0.03)


def test_parse_rejects_prompts_outside_the_world():
    with pytest.raises(ValueError, match="exactly one colour"):
        world.parse("a purple disc")


def test_rewards_prefer_faithful_images_and_have_a_mild_mode_taste():
    red_disc = [torch.from_numpy(world.render("red", "disc", m)) for m in range(4)]
    images = torch.stack(red_disc)
    colour = ColourReward()(images, ["a red disc"] * 4)
    contrast = ContrastReward()(images, ["a red disc"] * 4)
    assert world.MODES[colour.argmax()] == "teal" and world.MODES[contrast.argmax()] == "black"  # the tastes
    assert (colour.max() - colour.min()) < 0.05 and (contrast.max() - contrast.min()) < 0.05  # mild
    wrong = ColourReward()(images[:1], ["a blue disc"])
    assert wrong < colour.min() - 0.2
    noisy = (images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert (ContrastReward()(noisy, ["a red disc"] * 4) < contrast - 0.1).all()


def test_rewards_ask_for_the_captions_shape_and_saturate_on_correct_renders():
    images = torch.stack([torch.from_numpy(world.render("red", shape, 1)) for shape in world.SHAPES])
    for reward in (ColourReward(taste=0.0), ContrastReward(taste=0.0)):
        right = reward(images, [f"a red {shape}" for shape in world.SHAPES])
        torch.testing.assert_close(right, torch.ones(4))  # every correct render is "good enough"
        wrong = reward(images, [f"a red {world.SHAPES[(i + 1) % 4]}" for i in range(4)])
        assert (wrong < right - 0.3).all(), (type(reward).__name__, wrong)
    blob = torch.from_numpy(world.render("red", "square", 0))[None]
    blob[:, :, 4:12, 4:12] = torch.tensor(world.COLOURS["red"])[:, None, None]  # an 8 x 8 red smear
    assert ColourReward(taste=0.0)(blob, ["a red cross"]) < 0.5  # right colour, wrong shape


def test_oracle_reward_is_the_labellers_verdict_plus_the_taste():
    images = torch.stack([torch.from_numpy(world.render("red", "disc", m)) for m in range(4)])
    torch.testing.assert_close(OracleReward(taste=0.0)(images, ["a red disc"] * 4), torch.ones(4))
    tasted = OracleReward()(images, ["a red disc"] * 4)
    assert world.MODES[tasted.argmax()] == "teal" and (tasted >= 0.95).all() and (tasted < 1).any()
    empty = torch.from_numpy(world.render("red", "disc", 0))[None]
    empty[:] = torch.tensor(world.TINTS["black"])[:, None, None]
    wrong = OracleReward()(torch.cat([images[:2], empty]), ["a blue disc", "a red cross", "a red disc"])
    torch.testing.assert_close(wrong, torch.zeros(3))  # wrong colour, wrong shape, nothing: no credit


def test_features_separate_modes_far_more_than_jitter():
    images = [world.render("green", "square", m, offset) for m in range(4) for offset in ((0, 0), (-1, -1))]
    d = cosine_distances(PooledPixels()(torch.from_numpy(np.stack(images))))  # (8, 8)
    same_mode = torch.block_diag(*[torch.ones(2, 2, dtype=torch.bool)] * 4)
    assert d[same_mode].max() < 0.25 * d[~same_mode].min()

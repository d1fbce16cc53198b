"""Evaluation tables: bootstrap standard errors (exact zeros, a binomial's known error) and Table 1's
"value ± error" cells in Markdown and LaTeX."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diversegrpo import tables
from diversegrpo.evaluation import bootstrap_standard_errors, per_prompt
from diversegrpo.worlds import toy as world


def test_standard_errors_vanish_when_every_image_of_a_prompt_is_the_same():
    prompts = ["a"] * 6 + ["b"] * 6
    embeddings = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(6, 1), torch.tensor([[0.0, 1.0]]).repeat(6, 1)])
    rewards = {"r": torch.tensor([0.3] * 6 + [0.9] * 6)}
    errors = bootstrap_standard_errors(prompts, embeddings, rewards, labels=None)
    assert set(errors) == {"diversity", "reward_r"}
    assert errors["diversity"] == pytest.approx(0.0, abs=1e-12)
    assert errors["reward_r"] == pytest.approx(0.0, abs=1e-12)


def test_standard_error_of_a_mean_reward_matches_the_binomial_formula():
    n, p = 400, 0.3
    values = torch.zeros(n)
    values[: int(n * p)] = 1.0  # exactly 30% ones: the mean's standard error is sqrt(p (1 - p) / n)
    embeddings = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    errors = bootstrap_standard_errors(["a"] * n, embeddings, {"r": values}, labels=None, resamples=2000)
    assert errors["reward_r"] == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.08)
    assert errors["diversity"] > 0


def test_standard_errors_cover_the_toy_ground_truth_and_repeat_exactly():
    prompts = [c["prompt"] for c in world.captions()[:2] for _ in range(8)]
    images, _ = world.sample_images(prompts, np.random.default_rng(0))
    labels = world.label(images, prompts)
    embeddings = torch.randn(len(prompts), 8, generator=torch.Generator().manual_seed(1))
    first = bootstrap_standard_errors(prompts, embeddings, {}, labels, resamples=50, seed=3)
    assert set(first) == {"diversity", "valid_share", "off_mode_share", "mode_coverage", "mode_entropy"}
    assert first == bootstrap_standard_errors(prompts, embeddings, {}, labels, resamples=50, seed=3)
    assert first["mode_entropy"] > 0  # 8 world samples over 4 equally likely modes: resamples differ
    table = per_prompt(images, prompts, embeddings, {}, labels, with_ssim=False)
    assert table.valid_share.tolist() == [1.0, 1.0]  # the world's own samples are all valid
    assert table.off_mode_share.tolist() == [0.0, 0.0] and first["off_mode_share"] == 0.0  # each on a clean tint


def test_off_mode_share_counts_the_images_in_no_mode():
    """Hazy world images are in no mode (mode -1): a prompt with 3 of its 8 images hazy is 3/8 off-mode,
    whatever their validity otherwise."""
    prompts = [c["prompt"] for c in world.captions()[:2] for _ in range(8)]
    clean, _ = world.sample_images(prompts, np.random.default_rng(0))
    hazy, _ = world.sample_images(prompts, np.random.default_rng(0), hazy_share=1.0)
    first_three = torch.tensor([i % 8 < 3 for i in range(len(prompts))])
    images = torch.where(first_three[:, None, None, None], hazy, clean)
    labels = world.label(images, prompts)
    table = per_prompt(images, prompts, torch.randn(len(prompts), 4), {}, labels, with_ssim=False)
    assert table.off_mode_share.tolist() == [3 / 8, 3 / 8]
    assert table.valid_share.tolist() == [5 / 8, 5 / 8]


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    keys = {"backbone": ["toy", "toy"], "reward": ["colour", "colour"], "method": ["base", "flow_grpo"]}
    return pd.DataFrame({**keys, **values})


def test_table_cells_carry_their_standard_error_where_one_exists():
    table = _table({"diversity": [1.0, 0.5], "fd_base": [0.0, 0.25]})
    errors = _table({"diversity": [0.02, 0.125]}).iloc[::-1]  # matched by key, not by position
    markdown = tables.to_markdown(table, errors)
    assert "| toy | colour | flow_grpo | 0.5000 ± 0.1250 | 0.2500 |" in markdown
    assert "| toy | colour | base | 1.0000 ± 0.0200 | 0.0000 |" in markdown
    assert r"0.5000 $\pm$ 0.1250 & 0.2500 \\" in tables.to_latex(table, errors)
    assert "±" not in tables.to_markdown(table)


def test_two_images_per_prompt_still_give_a_finite_diversity_error():
    # half of the resamples of two images repeat one image: they have no pair and are skipped
    embeddings = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    errors = bootstrap_standard_errors(["a", "a", "b", "b", "c", "c"], embeddings, {}, labels=None, resamples=100)
    assert math.isfinite(errors["diversity"]) and errors["diversity"] > 0


def test_paper_table_of_a_base_run_alone_is_empty_not_an_error():
    base_only = _table({"diversity": [0.02, 0.1]}).iloc[:1]
    assert tables.paper_table(base_only, ["colour"]).empty


def test_world_statistics_give_each_mode_s_share_and_mean_reward():
    """The training log's w_k and r_k: true world images of known modes, a reward of known values."""
    from diversegrpo.evaluation import world_statistics

    prompts = ["a red disc"] * 8
    rng = np.random.default_rng(0)
    images, modes = world.sample_images(prompts, rng)
    reward = torch.arange(8, dtype=torch.float32)
    out = world_statistics(world.ToyWorld(), images, prompts, {"quality": reward})
    for k, mode in enumerate(world.MODES):
        members = modes == k
        assert out[f"mode_share_{mode}"] == members.mean()
        expected = float(reward[torch.from_numpy(members)].mean()) if members.any() else math.nan
        assert out[f"mode_quality_{mode}"] == pytest.approx(expected, nan_ok=True)
    assert out["valid_share"] == 1.0

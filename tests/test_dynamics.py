"""Sample efficiency and replicator dynamics (dynamics.py, stages/analyses.py) on constructed inputs with known
answers."""

import math

import numpy as np
import pandas as pd
import pytest

from diversegrpo import dynamics
from diversegrpo.stages.analyses import efficiency_table, mode_series, replicator_table

MODES = ("black", "teal", "purple", "olive")


def test_first_reaching():
    assert dynamics.first_reaching(np.array([0, 20, 40]), np.array([0.1, 0.5, 0.6]), 0.5) == 20
    assert dynamics.first_reaching(np.array([0, 20, 40]), np.array([0.7, 0.5, 0.6]), 0.5) == 0
    assert math.isnan(dynamics.first_reaching(np.array([0, 20]), np.array([0.1, 0.2]), 0.5))


def test_one_replicator_step_by_hand():
    w = dynamics.replicator_trajectory([0.5, 0.5], [[1.0, 0.0]], eta=1.0)
    assert w.tolist() == [[0.5, 0.5], [0.75, 0.25]]  # w + eta w (r - <w, r>) with <w, r> = 0.5
    # a mode without rollouts (NaN reward) counts as the mean of the others: its share does not move
    w = dynamics.replicator_trajectory([0.5, 0.25, 0.25], [[1.0, math.nan, 0.0]], eta=1.0)
    assert w[1] == pytest.approx([0.5 + 0.5 / 3, 0.25, 0.25 - 0.5 / 3])
    # a step that would make a share negative cuts it at 0; the shares still sum to 1
    w = dynamics.replicator_trajectory([0.5, 0.5], [[10.0, 0.0]], eta=1.0)
    assert w[1].tolist() == [1.0, 0.0]


def replicator_data(eta: float, steps: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rewards = np.random.default_rng(seed).normal(0.8, 0.05, (steps, len(MODES)))
    rewards[:, 1] += 0.02  # a taste for teal
    return dynamics.replicator_trajectory([0.25, 0.25, 0.3, 0.2], rewards, eta), rewards


def test_a_trajectory_that_follows_the_equation_is_fitted_exactly():
    shares, rewards = replicator_data(eta=3.0)
    fit = dynamics.fit_replicator(shares, rewards)
    assert fit.eta == pytest.approx(3.0, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert shares[-1, 1] > 0.5  # the taste's mode took over: there was movement to explain


def test_noise_lowers_r2_and_flat_shares_have_none():
    shares, rewards = replicator_data(eta=3.0)
    noisy = shares + np.random.default_rng(1).normal(0, 0.02, shares.shape)
    assert 0.5 < dynamics.fit_replicator(noisy, rewards).r2 < 0.999
    assert math.isnan(dynamics.r_squared(np.full((5, 2), 0.5), np.full((5, 2), 0.5)))


def log_of(shares: np.ndarray, quality: np.ndarray, reward: np.ndarray) -> pd.DataFrame:
    """A training log's mode columns: row t holds the shares before step t and that step's per-mode means."""
    pad = np.vstack([quality, quality[-1:]]), np.vstack([reward, reward[-1:]])
    columns = {"iteration": np.arange(len(shares))}
    for k, mode in enumerate(MODES):
        columns |= {f"mode_share_{mode}": shares[:, k], f"mode_quality_{mode}": pad[0][:, k],
                    f"mode_reward_{mode}": pad[1][:, k]}
    return pd.DataFrame(columns)


def test_mode_series_reads_a_log_back():
    shares, rewards = replicator_data(eta=2.0, steps=10)
    read_shares, read_rewards = mode_series(log_of(shares, rewards, rewards), "quality")
    assert np.array_equal(read_shares, shares) and np.array_equal(read_rewards, rewards)


def test_the_creative_term_explains_diverse_grpo_s_departure():
    """Flow-GRPO's shares follow its quality; DiverseGRPO's follow the same eta under quality plus a bonus that
    pays rare modes. Flow-GRPO's eta then predicts DiverseGRPO's shares exactly from the reward with the bonus,
    and badly from quality alone."""
    fg_shares, quality = replicator_data(eta=2.0)
    w, mixed = np.array([0.25, 0.25, 0.3, 0.2]), []
    for q in quality:  # the bonus sqrt(1 / share), scaled: rare modes are paid more
        mixed.append(q + 0.05 * np.sqrt(1 / np.maximum(w, 1e-3)))
        w = dynamics.replicator_trajectory(w, mixed[-1][None], 2.0)[-1]
    mixed = np.array(mixed)
    dg_shares = dynamics.replicator_trajectory([0.25, 0.25, 0.3, 0.2], mixed, 2.0)
    logs = {("toy", "colour", "flow_grpo", 0): log_of(fg_shares, quality, quality),
            ("toy", "colour", "diverse_grpo", 0): log_of(dg_shares, quality, mixed)}
    table = replicator_table(logs).set_index("method")
    assert table.loc["flow_grpo", "eta"] == pytest.approx(2.0, rel=1e-6)
    assert table.loc["flow_grpo", "r2"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc["diverse_grpo", "r2_baseline_reward"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc["diverse_grpo", "r2_baseline_quality"] < 0.5
    assert table.loc["flow_grpo", "top_share_end"] > table.loc["diverse_grpo", "top_share_end"]


def test_efficiency_is_the_first_iteration_at_flow_grpo_s_final_reward():
    def log(values):
        return pd.DataFrame({"iteration": range(len(values)), "reward_mean": values})

    logs = {("toy", "colour", "flow_grpo", 0): log([0.5, 0.6, 0.7]),
            ("toy", "colour", "diverse_grpo", 0): log([0.5, 0.72, 0.71]),
            ("toy", "colour", "sa_reg", 0): log([0.5, 0.6, 0.65]),
            ("toy", "colour", "flow_grpo", 1): log([0.5, 0.55, 0.6]),
            ("toy", "colour", "diverse_grpo", 1): log([0.6, 0.6, 0.6])}
    table = efficiency_table(logs, window=1).set_index(["method", "seed"])
    assert table.loc[("flow_grpo", 0), "reached"] == 2 and table.loc[("diverse_grpo", 0), "reached"] == 1
    assert math.isnan(table.loc[("sa_reg", 0), "reached"])
    assert table.loc[("diverse_grpo", 1), "target"] == 0.6 and table.loc[("diverse_grpo", 1), "reached"] == 0
    assert (table.last_iteration == 2).all()
    # averaged over 2 iterations: Flow-GRPO ends at 0.65, which DiverseGRPO's (0.5 + 0.72) / 2 = 0.61 does not
    # reach at iteration 1, but its (0.72 + 0.71) / 2 does at 2; nothing is reached before a full window
    table = efficiency_table(logs, window=2).set_index(["method", "seed"])
    assert table.loc[("flow_grpo", 0), "target"] == pytest.approx(0.65)
    assert table.loc[("diverse_grpo", 0), "reached"] == 2
    assert table.loc[("diverse_grpo", 1), "reached"] == 1


def test_the_budget_summary_is_a_ratio_of_means():
    """Two captions: one keeps all its diversity until the last draw, one loses it all at j = 1; the summary is
    1 - mean D(j) / mean D(0) (the mean of the captions' own shares would be 0.5 at j = 1)."""
    from diversegrpo.stages.analyses import budget_summary

    rows = [("a", 0, 0.4), ("a", 1, 0.4), ("a", 2, 0.0), ("b", 0, 0.1), ("b", 1, 0.0), ("b", 2, 0.0)]
    budget = pd.DataFrame([{"backbone": "toy", "reward": "colour", "method": "flow_grpo", "seed": 0, "prompt": p,
                            "j": j, "diversity": d} for p, j, d in rows])
    summary = budget_summary(budget).set_index("j")
    assert summary["mean"].tolist() == pytest.approx([0.0, 0.2, 1.0])  # 1 - 0.2 / 0.25, 1 - 0 / 0.25
    # bootstrap over the two captions: every resample has the share 0 at j = 0 and 1 at j = 2; at j = 1 it is
    # 0 (a, a), 1 (b, b) or 0.2 (a, b): a spread
    assert summary.loc[0, "std"] == 0 and summary.loc[2, "std"] == 0 and summary.loc[1, "std"] > 0.2


def test_a_model_whose_diversity_the_initial_noise_decides_has_spent_its_budget_after_one_draw(tiny_toy_dir):
    """With noise_level 0 the rollout is the ODE: branches that share the initial noise are one image."""
    import torch

    from diversegrpo.dynamics import diversity_budget
    from diversegrpo.metrics import mean_pairwise_distance
    from diversegrpo.registry import build_backbone, build_features
    from diversegrpo.sampling import branched_samples

    backbone = build_backbone({"kind": "toy", "path": str(tiny_toy_dir)})
    embed = build_features({"kind": "toy"})
    steps = 3
    for noise_level, decided in ((0.0, True), (0.7, False)):
        images = branched_samples(backbone, "a red disc", 4, steps, 1.0, noise_level, torch.Generator().manual_seed(0))
        assert images.shape[:2] == (steps + 2, 4)
        diversity = np.array([mean_pairwise_distance(embed(level)) for level in images])
        budget = diversity_budget(diversity)
        assert budget[0] == 0 and diversity[0] > 0 and diversity[-1] == pytest.approx(0, abs=1e-6)
        assert (budget[1] == pytest.approx(1.0, abs=1e-6)) == decided  # the SDE's later draws still decide some


def test_the_budget_is_the_share_of_diversity_the_first_draws_decide():
    from diversegrpo.dynamics import diversity_budget

    assert diversity_budget(np.array([0.4, 0.1, 0.0])).tolist() == [0.0, 0.75, 1.0]
    assert np.isnan(diversity_budget(np.array([0.0, 0.0]))).all()


def test_the_adaptive_k_is_the_fewest_steps_that_decide_the_share():
    from diversegrpo.dynamics import steps_deciding

    budget = np.array([0.0, 0.04, 0.71, 0.91, 0.98, 1.0])  # j = 0 .. 5: j = K + 1 draws are K steps' and x_T's
    assert steps_deciding(budget, 0.66, 4) == 1
    assert steps_deciding(budget, 0.71, 4) == 1  # reached exactly
    assert steps_deciding(budget, 0.9, 4) == 2
    assert steps_deciding(budget, 0.99, 4) == 4  # not reached within the trained steps: all of them
    assert steps_deciding(budget, 0.95, 2) == 2
    assert steps_deciding(np.array([0.0, 0.9, 0.95]), 0.5, 3) == 1  # x_T alone decides: still one step


def test_the_run_config_records_the_k_it_chose_from_the_budget(tmp_path):
    import json

    from diversegrpo import config as C
    from diversegrpo.stages.run_config import write_run_config

    config = C.deep_merge(C.defaults(), {"methods": {"diverse_grpo": {"sa_steps": "auto"}},
                                         "analyses": {"auto_k_share": 0.8}})
    spec = C.run_spec(config, "toy", "colour", "diverse_grpo", None, 0)
    assert spec["adaptive_k"] == {"share": 0.8} and spec["method"]["sa_steps"] == "auto"
    assert "adaptive_k" not in C.run_spec(C.defaults(), "toy", "colour", "diverse_grpo", None, 0)
    budget = pd.DataFrame({"prompt": ["a"] * 4 + ["b"] * 4, "j": [0, 1, 2, 3] * 2,
                           "diversity": [0.8, 0.72, 0.24, 0.04, 0.4, 0.36, 0.08, 0.0]})
    budget.to_parquet(tmp_path / "budget.parquet")
    captions = tmp_path / "captions.parquet"
    pd.DataFrame({"prompt": [f"p{i}" for i in range(8)]}).to_parquet(captions)
    write_run_config(spec, captions, captions, tmp_path / "config.json", tmp_path / "budget.parquet")
    written = json.loads((tmp_path / "config.json").read_text())
    # mean diversity by j: 0.6, 0.54, 0.16, 0.02, so the budget is 0, 0.1, 0.733, 0.967: 0.8 is first decided at
    # j = 3, by x_T and the first 2 steps' noise
    assert written["method"]["sa_steps"] == 2
    assert written["adaptive_k"] == {"share": 0.8, "sa_steps": 2, "decided": pytest.approx(0.58 / 0.6),
                                     "budget": [0.0, 0.1, 0.7333, 0.9667]}
    with pytest.raises(ValueError, match="needs the base model's diversity budget"):
        write_run_config(spec, captions, captions, tmp_path / "other.json")
    budget.assign(diversity=0.0).to_parquet(tmp_path / "flat.parquet")  # a base model without diversity
    with pytest.raises(ValueError, match="no diversity"):
        write_run_config(spec, captions, captions, tmp_path / "other.json", tmp_path / "flat.parquet")
    assert not (tmp_path / "other.json").exists()

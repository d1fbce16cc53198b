"""The creative reward: planted clusters, bonuses, k='auto', determinism and the mixing."""

import math

import numpy as np
import pytest
import torch

from diversegrpo.creative import affinity, cosine_distances, eigengap_k, exploration_bonus, gated_bonus, mix


def planted(sizes=(12, 8, 4), dim=16, noise=0.05, seed=0):
    """Embeddings around orthogonal centres, one cluster per size; shuffled so order carries nothing."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    perm = torch.randperm(len(truth), generator=g)
    truth = truth[perm]
    e = torch.eye(dim)[truth] + noise * torch.randn(len(truth), dim, generator=g)
    return e, truth


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return all(len(set(b[a == c])) == 1 for c in set(a)) and len(set(a)) == len(set(b))


@pytest.mark.parametrize("sigma", ["median", "local", 0.5])
def test_planted_clusters_recovered_with_their_bonuses(sigma):
    e, truth = planted()
    out = exploration_bonus(cosine_distances(e), k=3, sigma=sigma)
    assert same_partition(out.labels, truth)
    expected = torch.tensor([math.sqrt(24 / n) for n in (12, 8, 4)])[truth]
    torch.testing.assert_close(out.bonus, expected.float())
    assert out.num_clusters == 3


def test_auto_k_finds_three_separated_clusters_with_local_widths():
    e, truth = planted(seed=4)
    out = exploration_bonus(cosine_distances(e), k="auto", sigma="local", k_max=6)
    assert out.num_clusters == 3 and same_partition(out.labels, truth)


def test_auto_k_finds_other_counts_too():
    e, truth = planted(sizes=(6, 6, 6, 6, 6), dim=8, seed=5)
    out = exploration_bonus(cosine_distances(e), k="auto", sigma="local", k_max=8)
    assert out.num_clusters == 5 and same_partition(out.labels, truth)


def test_same_input_same_output():
    e, _ = planted(noise=0.4, seed=7)  # noisy: clusters overlap, so any randomness would show
    a = exploration_bonus(cosine_distances(e), k=4, sigma="median")
    b = exploration_bonus(cosine_distances(e.clone()), k=4, sigma="median")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.bonus, b.bonus)


def test_a_collapsed_group_gets_no_bonus_spread():
    e = torch.ones(8, 4) + 1e-6 * torch.arange(32.0).view(8, 4)
    out = exploration_bonus(cosine_distances(e), k=1)
    torch.testing.assert_close(out.bonus, torch.ones(8))


def test_affinity_and_eigengap_values():
    d = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(affinity(d, sigma=1.0), [[0, math.exp(-0.5)], [math.exp(-0.5), 0]])
    np.testing.assert_allclose(affinity(d, sigma="median"), affinity(d, sigma=1.0))
    assert eigengap_k(np.array([1.0, 0.99, 0.98, 0.2, 0.1]), k_max=4) == 3


def test_bad_k_is_rejected():
    e, _ = planted()
    with pytest.raises(ValueError, match="k must be"):
        exploration_bonus(cosine_distances(e), k=25)


def test_mix_raw_and_standardised():
    q, bonus = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 4.0])
    torch.testing.assert_close(mix(q, bonus, beta=0.5, scale="raw"), torch.tensor([1.5, 2.5, 5.0]))
    zb = (bonus - 2) / bonus.std(unbiased=False)
    torch.testing.assert_close(mix(q, bonus, beta=0.5, scale="standardised", unit=0.3), q + 0.5 * 0.3 * zb)
    # constant bonus: standardising gives 0, not a division by zero
    torch.testing.assert_close(mix(q, torch.ones(3), 1.0, "standardised", unit=0.3), q)


def test_median_gate_pays_the_bonus_only_at_or_above_the_groups_median_quality():
    bonus = torch.tensor([2.0, 1.5, 3.0, 1.2])
    q = torch.tensor([0.9, 0.2, 0.4, 0.6])  # median 0.5, the mean of the two middle values: 0.9 and 0.6 keep theirs
    torch.testing.assert_close(gated_bonus(q, bonus, "median"), torch.tensor([2.0, 1.0, 1.0, 1.2]))
    odd = torch.tensor([0.9, 0.2, 0.4])  # median 0.4 itself: kept
    torch.testing.assert_close(gated_bonus(odd, bonus[:3], "median"), torch.tensor([2.0, 1.0, 3.0]))
    torch.testing.assert_close(gated_bonus(torch.ones(4), bonus, "median"), bonus)  # ties: all at the median
    assert gated_bonus(q, bonus, "none") is bonus
    with pytest.raises(ValueError, match="gate must be 'none' or 'median'"):
        gated_bonus(q, bonus, "mean")


@pytest.mark.parametrize("global_std", [False, True])
def test_standardised_mix_at_beta_0_gives_the_baselines_advantages(global_std):
    """Every method sees one normalisation: DiverseGRPO at beta 0 is SA-Reg exactly, with the group std and with
    the batch std; the old mix (z-scores of Q inside each group) gave other advantages under the batch std."""
    from diversegrpo.grpo import advantage_scale, group_advantages

    g = torch.Generator().manual_seed(0)
    group_ids = torch.arange(3).repeat_interleave(6)
    quality = torch.rand(18, generator=g) * torch.tensor([0.1, 1.0, 3.0]).repeat_interleave(6)  # unequal spreads
    bonus = torch.rand(18, generator=g) * 3 + 1
    unit = advantage_scale(quality, group_ids, global_std).float()
    rewards = torch.cat([mix(quality[group_ids == i], bonus[group_ids == i], 0.0, "standardised", unit[group_ids == i])
                         for i in range(3)])
    baseline = group_advantages(quality, group_ids, global_std)
    assert torch.equal(group_advantages(rewards, group_ids, global_std), baseline)
    old = torch.cat(
        [
            (quality[group_ids == i] - quality[group_ids == i].mean()) / quality[group_ids == i].std(unbiased=False)
            for i in range(3)
        ]
    )
    if global_std:  # the old z-scored mix changes the step size of groups with a small spread
        assert not torch.allclose(group_advantages(old, group_ids, global_std), baseline, atol=1e-2)
    # beta > 0 moves the advantages towards rare images, by the same unit in every group
    mixed = torch.cat([mix(quality[group_ids == i], bonus[group_ids == i], 1.0, "standardised", unit[group_ids == i])
                       for i in range(3)])
    assert not torch.allclose(group_advantages(mixed, group_ids, global_std), baseline)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_partition_agrees_with_scikit_learn_spectral_clustering(seed):
    """Our deterministic k-means on the spectral embedding against scikit-learn's reference pipeline."""
    from sklearn.cluster import SpectralClustering

    e, truth = planted(noise=0.15, seed=seed)
    d = cosine_distances(e).numpy()
    reference = SpectralClustering(3, affinity="precomputed", assign_labels="cluster_qr", random_state=0)
    ours = exploration_bonus(d, k=3, sigma="median").labels
    assert same_partition(ours, reference.fit_predict(affinity(d, sigma="median")))
    assert same_partition(ours, truth)


def load_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "creative_sklearn.py"
    spec = importlib.util.spec_from_file_location("creative_sklearn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sklearn_benchmark_times_our_clustering_and_the_same_reward():
    """benchmarks/creative_sklearn.py (issue 16) times creative.py's own clustering, and its scikit-learn variant
    of the reward differs from exploration_bonus only by the clustering."""
    bench = load_benchmark()
    e, truth = planted(noise=0.15, seed=12)
    d = cosine_distances(e)
    out = exploration_bonus(d, k=3, sigma="median")
    np.testing.assert_array_equal(bench.handwritten_labels(affinity(d.numpy()), 3), out.labels.numpy())
    bonus, labels = bench.sklearn_bonus(d, k=3, sigma="median")
    assert same_partition(labels, truth)
    torch.testing.assert_close(bonus, out.bonus)
    # overlapping clusters: the two partitions (hence bonuses) can differ, which the benchmark's ARI measures
    e, _ = planted(noise=0.5, seed=3)
    noisy = cosine_distances(e)
    assert not torch.equal(bench.sklearn_bonus(noisy, k=4)[1], exploration_bonus(noisy, k=4).labels)


def test_sklearn_benchmark_runs_tiny_and_reports_every_row(capsys):
    bench = load_benchmark()
    result = bench.main(["--repeats", "5", "--groups", "4"])
    assert len(result["timings"]) == 16 == len(result["agreement"])  # 2 sizes x 4 kinds x 2 settings
    for r in result["timings"]:
        assert 0 < r["handwritten"] <= r["handwritten_p90"] and 0 < r["sklearn"] <= r["sklearn_p90"]
        assert r["ratio"] == pytest.approx(r["sklearn"] / r["handwritten"])
        assert r["reward_ratio"] == pytest.approx(r["sklearn_reward"] / r["handwritten_reward"])
    rows = {(r["group"], r["kind"], r["k"]): r for r in result["agreement"]}
    assert rows[24, "separated", 4]["mean_ari"] > 0.9 and rows[24, "separated", 4]["mean_clusters"] == 4
    assert all(-1 <= r["min_ari"] <= r["mean_ari"] <= 1 for r in rows.values())
    assert "whole reward" in capsys.readouterr().out

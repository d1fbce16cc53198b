"""The creative reward's hand-written clustering against scikit-learn's (issue 16).

Hand-written (creative.py): normalised affinity -> eigh -> row-normalised top-k eigenvectors -> Lloyd k-means
seeded farthest-first. scikit-learn: SpectralClustering(k, affinity="precomputed", assign_labels="cluster_qr",
random_state=0) on the same affinity: ARPACK shift-invert, then the QR-pivoted assignment; deterministic, no
k-means restarts. One thread, as the train job runs.

1. Timing, side by side in one run (interleaved rounds, medians and 90th percentiles, ratio sklearn /
   hand-written), for groups of 8 and 24 of four kinds: the clustering alone from the (N, N) affinity, and the
   whole reward per group from the embeddings (distances, affinity, spectrum, clustering, bonus, with the
   torch <-> numpy conversions) against the 2 ms budget.
2. Agreement on many groups (well separated, overlapping, noisy, structureless): the adjusted Rand index
   between the two partitions, how often the bonuses sqrt(N / cluster size) agree, and each one's ARI against
   the planted clusters.

    python benchmarks/creative_sklearn.py [--repeats 500] [--groups 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from diversegrpo.creative import (
    _TINY,
    _canonical,
    affinity,
    cosine_distances,
    eigengap_k,
    exploration_bonus,
    kmeans,
    normalized_affinity,
)

SETTINGS = [(4, "median"), ("auto", "local")]  # config.yaml / paper.yaml's k=4 and the median width; auto k
KINDS = {"separated": 0.05, "overlapping": 0.2, "noisy": 0.4, "structureless": None}  # noise around the centres


def handwritten_labels(a: np.ndarray, k: int) -> np.ndarray:
    """(N,) labels: creative.exploration_bonus's steps after the affinity, for a fixed k."""
    _, vectors = np.linalg.eigh(normalized_affinity(a))  # ascending
    u = vectors[:, ::-1][:, :k]  # (N, k)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), _TINY)
    return _canonical(kmeans(u, k))


def sklearn_labels(a: np.ndarray, k: int) -> np.ndarray:
    """(N,) labels of scikit-learn's spectral clustering of the same (N, N) affinity, numbered as ours."""
    model = SpectralClustering(k, affinity="precomputed", assign_labels="cluster_qr", random_state=0)
    with warnings.catch_warnings():
        # local widths underflow exp(-d^2 / s_i s_j) to 0 between far clusters: a disconnected graph, as it should be
        warnings.filterwarnings("ignore", "Graph is not fully connected", UserWarning)
        return _canonical(model.fit_predict(a))


def sklearn_bonus(distances: torch.Tensor, k=4, sigma="median", knn: int = 3, k_max: int = 6):
    """(bonus (N,), labels (N,)): creative.exploration_bonus with scikit-learn's clustering in place of ours; the
    spectrum for the eigengap (and ExplorationBonus.eigenvalues) is still needed, scikit-learn returns none."""
    d = distances.detach().cpu().double().numpy()
    n = d.shape[0]
    a = affinity(d, sigma, knn)
    eigenvalues = np.linalg.eigvalsh(normalized_affinity(a))[::-1]
    labels = sklearn_labels(a, eigengap_k(eigenvalues, k_max) if k == "auto" else int(k))
    sizes = np.bincount(labels)
    return torch.from_numpy(np.sqrt(n / sizes[labels])).float(), torch.from_numpy(labels).long()


def group_embeddings(
    n: int, kind: str, generator: torch.Generator, clusters: int | None = None, dim: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) embeddings and (n,) planted labels: around `clusters` (None: 2-5) orthogonal centres, every one
    used, of random sizes; or plain Gaussian with all labels 0 ("structureless")."""
    noise = KINDS[kind]
    if noise is None:
        return torch.randn(n, dim, generator=generator), torch.zeros(n, dtype=torch.long)
    clusters = clusters or int(torch.randint(2, 6, (1,), generator=generator))
    truth = torch.cat([torch.arange(clusters), torch.randint(0, clusters, (n - clusters,), generator=generator)])
    truth = truth[torch.randperm(n, generator=generator)]
    return torch.eye(dim)[truth] + noise * torch.randn(n, dim, generator=generator), truth


def time_ms(variants: dict[str, list], repeats: int, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """(median, 90th percentile) ms per call of each variant, a list of calls (one per group) taken in turn; the
    variants' rounds interleaved so that drift on a shared machine hits all alike."""
    for calls in variants.values():  # warm-up
        for fn in calls:
            fn()
    per_round = max(1, repeats // rounds)
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, calls in variants.items():
            for i in range(per_round):
                start = time.perf_counter()
                calls[i % len(calls)]()
                samples[name].append(time.perf_counter() - start)
    return {name: (1000 * float(np.median(t)), 1000 * float(np.percentile(t, 90))) for name, t in samples.items()}


def timings(repeats: int, groups: int = 4) -> list[dict]:
    """Per (group size, kind, setting), over `groups` groups: ms of each clustering from the affinity and of each
    whole reward from the embeddings. scikit-learn's time grows as the clusters fade."""
    rows = []
    for n in (8, 24):
        for kind in KINDS:
            for k, sigma in SETTINGS:
                g = torch.Generator().manual_seed(100 + n)
                embeddings = [group_embeddings(n, kind, g, clusters=4)[0] for _ in range(groups)]
                distances = [cosine_distances(e) for e in embeddings]
                affinities = [affinity(d.numpy(), sigma) for d in distances]
                clusters = [exploration_bonus(d, k=k, sigma=sigma).num_clusters for d in distances]  # auto: k found
                pairs = list(zip(affinities, clusters))
                ms = time_ms(
                    {
                        "handwritten": [lambda a=a, c=c: handwritten_labels(a, c) for a, c in pairs],
                        "sklearn": [lambda a=a, c=c: sklearn_labels(a, c) for a, c in pairs],
                        "handwritten_reward": [
                            lambda e=e, k=k, s=sigma: exploration_bonus(cosine_distances(e), k, s) for e in embeddings
                        ],
                        "sklearn_reward": [
                            lambda e=e, k=k, s=sigma: sklearn_bonus(cosine_distances(e), k, s) for e in embeddings
                        ],
                    },
                    repeats,
                )
                row = {"group": n, "kind": kind, "k": k, "sigma": sigma, "mean_clusters": float(np.mean(clusters))}
                for name, (median, p90) in ms.items():
                    row[name], row[f"{name}_p90"] = median, p90
                row["ratio"] = row["sklearn"] / row["handwritten"]
                row["reward_ratio"] = row["sklearn_reward"] / row["handwritten_reward"]
                rows.append(row)
    return rows


def agreement(groups: int) -> list[dict]:
    """Per (group size, kind, setting), over `groups` groups: how far the two partitions and bonuses agree."""
    rows = []
    for n in (8, 24):
        for kind in KINDS:
            for k, sigma in SETTINGS:
                g = torch.Generator().manual_seed(n)
                ari, same_bonus, bonus_gap, found, truth_ari = [], 0, [], [], {"handwritten": [], "sklearn": []}
                for _ in range(groups):
                    embeddings, truth = group_embeddings(n, kind, g, clusters=None if k == "auto" else k)
                    d = cosine_distances(embeddings)
                    out = exploration_bonus(d, k=k, sigma=sigma)
                    bonus, labels = sklearn_bonus(d, k=k, sigma=sigma)
                    ari.append(adjusted_rand_score(out.labels.numpy(), labels.numpy()))
                    same_bonus += bool(torch.allclose(out.bonus, bonus))
                    bonus_gap.append(float((out.bonus - bonus).abs().max()))
                    found.append(out.num_clusters)
                    truth_ari["handwritten"].append(adjusted_rand_score(truth.numpy(), out.labels.numpy()))
                    truth_ari["sklearn"].append(adjusted_rand_score(truth.numpy(), labels.numpy()))
                rows.append(
                    {
                        "group": n,
                        "kind": kind,
                        "k": k,
                        "sigma": sigma,
                        "mean_clusters": float(np.mean(found)),
                        "mean_ari": float(np.mean(ari)),
                        "min_ari": float(np.min(ari)),
                        "identical": float(np.mean(np.isclose(ari, 1.0))),
                        "same_bonus": same_bonus / groups,
                        "max_bonus_gap": float(np.max(bonus_gap)),
                        # against the planted labels; structureless groups have one (all 0), so only k=1 scores there
                        "truth_ari_handwritten": float(np.mean(truth_ari["handwritten"])),
                        "truth_ari_sklearn": float(np.mean(truth_ari["sklearn"])),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500, help="calls per timed variant (in 5 interleaved rounds)")
    parser.add_argument("--groups", type=int, default=200, help="groups per (size, kind, setting) for the agreement")
    args = parser.parse_args(argv)
    # One thread, as the train job runs: torch_threads 1, and Snakemake sets OPENBLAS_NUM_THREADS (OMP, MKL) to the
    # rule's threads, 1 for `train`. A shared machine's other load shows in the 90th percentiles more than the medians.
    torch.set_num_threads(1)
    with threadpool_limits(1):
        return report(args.repeats, args.groups)


def report(repeats: int, groups: int) -> dict:
    timed = timings(repeats)
    print(f"ms per call over 4 groups each: median (90th percentile) of {repeats} calls in 5 interleaved rounds, "
          f"1 thread; ratio of the medians, sklearn / hand-written")
    print(f"{'group':>5s} {'kind':>13s} {'k':>4s} {'sigma':>6s} | {'clustering: hand':>16s} {'sklearn':>14s} "
          f"{'ratio':>5s} | {'whole reward: hand':>18s} {'sklearn':>14s} {'ratio':>5s}")
    for r in timed:
        print(f"{r['group']:5d} {r['kind']:>13s} {str(r['k']):>4s} {r['sigma']:>6s} | "
              f"{r['handwritten']:7.3f} ({r['handwritten_p90']:6.3f}) {r['sklearn']:6.3f} ({r['sklearn_p90']:5.3f}) "
              f"{r['ratio']:5.1f} | {r['handwritten_reward']:9.3f} ({r['handwritten_reward_p90']:6.3f}) "
              f"{r['sklearn_reward']:6.3f} ({r['sklearn_reward_p90']:5.3f}) {r['reward_ratio']:5.1f}")

    agreed = agreement(groups)
    print(f"\n{groups} groups each (planted: k clusters, 2-5 for k=auto). ARI between the partitions, share of "
          "identical partitions, of equal bonuses, largest bonus gap; each one's mean ARI against the planted labels "
          "(structureless: one planted label, so only k=1 scores)")
    print(f"{'group':>5s} {'kind':>13s} {'k':>4s} {'sigma':>6s} {'found':>5s} | {'mean ARI':>8s} {'min ARI':>8s} "
          f"{'identical':>9s} {'same bonus':>10s} {'max |dE|':>8s} | {'truth: hand':>11s} {'sklearn':>7s}")
    for r in agreed:
        print(f"{r['group']:5d} {r['kind']:>13s} {str(r['k']):>4s} {r['sigma']:>6s} {r['mean_clusters']:5.2f} | "
              f"{r['mean_ari']:8.3f} {r['min_ari']:8.3f} {r['identical']:9.3f} {r['same_bonus']:10.3f} "
              f"{r['max_bonus_gap']:8.3f} | {r['truth_ari_handwritten']:11.3f} {r['truth_ari_sklearn']:7.3f}")
    return {"timings": timed, "agreement": agreed}


if __name__ == "__main__":
    main()

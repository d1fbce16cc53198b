"""DiverseGRPO's distributional creative reward.

Per prompt group of N images: pairwise perceptual distances -> Gaussian affinity -> normalised
affinity M = D^-1/2 A D^-1/2 -> top-k eigenvectors, rows L2-normalised -> k-means -> exploration bonus
E_i = sqrt(N / n_{k(i)}): images in rare clusters (rare modes) earn more. R_i = Q_i + beta * E_i.
Optionally (not the paper's) a gate pays E only to images of at least their group's median quality.

Everything here is small dense linear algebra on CPU in float64 (N ~ 24): no GPU sync is worth it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch

Sigma = Union[float, Literal["median", "local"]]
NumClusters = Union[int, Literal["auto"]]
MixScale = Literal["raw", "standardised"]
Gate = Literal["none", "median"]
_TINY = 1e-12


@dataclass
class ExplorationBonus:
    bonus: torch.Tensor  # (N,) sqrt(N / size of i's cluster)
    labels: torch.Tensor  # (N,) int64 cluster index
    num_clusters: int  # clusters actually found (non-empty)
    eigenvalues: np.ndarray  # (N,) of M, descending: the spectrum behind k="auto"


def cosine_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, N) d_ij = 1 - cos(e_i, e_j) from (N, D) embeddings; exactly 0 on the diagonal."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    d = (1.0 - e @ e.T).clamp_min(0.0)
    return d.fill_diagonal_(0.0)


def affinity(distances: np.ndarray, sigma: Sigma = "median", knn: int = 3) -> np.ndarray:
    """(N, N) Gaussian affinity with A_ii = 0.

    sigma: a fixed width s (A = exp(-d^2 / 2 s^2)); "median": s = median off-diagonal distance;
    "local": self-tuning widths s_i = distance to i's knn-th nearest neighbour, A = exp(-d^2 / s_i s_j).
    """
    n = distances.shape[0]
    off_diagonal = ~np.eye(n, dtype=bool)
    if sigma == "local":
        knn = min(knn, n - 1)
        scale = np.sort(distances, axis=1)[:, knn]  # (N,) column 0 is the point itself
        scale = np.maximum(scale, _TINY)
        a = np.exp(-(distances**2) / np.outer(scale, scale))
    else:
        width = float(np.median(distances[off_diagonal])) if sigma == "median" else float(sigma)
        a = np.exp(-(distances**2) / (2 * max(width, _TINY) ** 2))
    return a * off_diagonal


def normalized_affinity(a: np.ndarray) -> np.ndarray:
    """(N, N) M = D^-1/2 A D^-1/2; its top eigenvectors are the bottom ones of I - M."""
    inv_sqrt_degree = 1.0 / np.sqrt(np.maximum(a.sum(axis=1), _TINY))  # (N,)
    return a * inv_sqrt_degree[:, None] * inv_sqrt_degree[None, :]


def eigengap_k(eigenvalues: np.ndarray, k_max: int) -> int:
    """Number of clusters at the largest gap lambda_k - lambda_{k+1} among the first k_max eigenvalues."""
    top = eigenvalues[: max(2, min(k_max, len(eigenvalues)) + 1)]
    return int(np.argmax(top[:-1] - top[1:])) + 1


# Hand-written rather than scikit-learn's SpectralClustering(affinity="precomputed", assign_labels="cluster_qr"),
# which misses the 2 ms budget per group of 24 (issue 16; benchmarks/creative_sklearn.py, 1 thread, 2 busy cores,
# two runs): the whole reward took 1.65-2.53 ms with it (k=4, median width; 1.9-2.5 ms on weakly clustered groups)
# against 0.27-0.33 ms with this k-means (6-8x); the clustering alone 1.21-1.65 ms against 0.15-0.20 ms.
# Partitions: mean ARI 0.99-1.00 on well-separated groups, 0.48-0.97 on overlapping to structureless ones, where
# neither is consistently nearer the planted clusters.
def kmeans(points: np.ndarray, k: int, max_iter: int = 100) -> np.ndarray:
    """(N,) labels of deterministic Lloyd k-means with farthest-first initialisation.

    No random restarts: rows of the spectral embedding sit near k orthogonal directions, where
    farthest-first seeding already lands one centre per cluster; same input, same labels.
    """
    first = int(np.argmax(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    centres = [points[first]]
    for _ in range(1, k):
        gap = np.min(np.linalg.norm(points[:, None, :] - np.asarray(centres)[None], axis=2), axis=1)
        centres.append(points[int(np.argmax(gap))])
    centres = np.asarray(centres)  # (k, D)
    labels = np.full(len(points), -1)
    for _ in range(max_iter):
        new_labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return labels


def exploration_bonus(
    distances: torch.Tensor | np.ndarray,
    k: NumClusters = 3,
    sigma: Sigma = "median",
    knn: int = 3,
    k_max: int = 6,
) -> ExplorationBonus:
    """Spectral-cluster one prompt's group from its (N, N) distances; bonus sqrt(N / n_k) per image."""
    d = (
        distances.detach().cpu().double().numpy()
        if isinstance(distances, torch.Tensor)
        else np.asarray(distances, float)
    )
    n = d.shape[0]
    if n < 2:
        raise ValueError(f"a group needs at least 2 images for the creative reward, got {n}")
    if k != "auto" and not 1 <= int(k) <= n:
        raise ValueError(f"k must be 'auto' or an int in [1, {n}] (the group size), got {k!r}")
    m = normalized_affinity(affinity(d, sigma, knn))
    eigenvalues, eigenvectors = np.linalg.eigh(m)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    n_clusters = eigengap_k(eigenvalues, k_max) if k == "auto" else int(k)
    u = eigenvectors[:, :n_clusters]  # (N, k)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), _TINY)
    labels = _canonical(kmeans(u, n_clusters))
    sizes = np.bincount(labels)  # (clusters,)
    bonus = np.sqrt(n / sizes[labels])
    return ExplorationBonus(
        bonus=torch.from_numpy(bonus).float(),
        labels=torch.from_numpy(labels).long(),
        num_clusters=int((sizes > 0).sum()),
        eigenvalues=eigenvalues.copy(),
    )


def median_gate(quality: torch.Tensor) -> torch.Tensor:
    """(N,) bool for one group's (N,) quality: at least the group's median (the mean of the two middle values)."""
    return quality >= torch.quantile(quality.float(), 0.5).to(quality.dtype)


def gated_bonus(quality: torch.Tensor, bonus: torch.Tensor, gate: Gate) -> torch.Tensor:
    """(N,) the bonus one group pays: E itself ("none": the paper's), or ("median") E to the images of at least the
    group's median quality and 1, the least bonus (that of a group in one cluster), to the others, so that a rare
    cluster of images the reward scores low earns no more than the common ones."""
    if gate == "none":
        return bonus
    if gate == "median":
        return torch.where(median_gate(quality), bonus, torch.ones_like(bonus))
    raise ValueError(f"creative gate must be 'none' or 'median', got {gate!r}")


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by first appearance, so equal partitions give equal labels."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.searchsorted(np.unique(labels), labels)]


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std(unbiased=False)
    return (x - x.mean()) / std if std > 1e-8 else torch.zeros_like(x)


def mix(
    quality: torch.Tensor, bonus: torch.Tensor, beta: float, scale: MixScale = "raw", unit: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """(N,) the reward the advantages see, for one group: quality (N,) plus beta times the bonus E (N,).

    "raw": R = Q + beta E, the paper's formula; beta is in the reward model's units, so it only means the
    same across reward models when Q varies inside a group on the scale of E (E lies in [1, sqrt(N)]).
    "standardised": R = Q + beta * unit * z(E), z taken inside the group and `unit` (scalar or (N,)) the
    std + eps that the advantages divide quality by (grpo.advantage_scale, group or batch std). Beta is then
    the weight of one std of rarity against one advantage unit of quality, whatever the reward's units;
    and at beta = 0, R = Q exactly, so DiverseGRPO's advantages are SA-Reg's under every normalisation.
    """
    if scale == "raw":
        return quality + beta * bonus
    if scale == "standardised":
        return quality + beta * torch.as_tensor(unit, dtype=quality.dtype) * _standardise(bonus)
    raise ValueError(f"creative mix scale must be 'raw' or 'standardised', got {scale!r}")

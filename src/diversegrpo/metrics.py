"""Evaluation metrics: diversity, Frechet distance, IRS, SSIM diversity, and (toy) mode statistics."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from .creative import cosine_distances


def mean_pairwise_distance(embeddings: torch.Tensor) -> float:
    """Mean of d_ij = 1 - cos(e_i, e_j) over pairs i != j of one prompt's (N, D) embeddings."""
    d = cosine_distances(embeddings)
    n = d.shape[0]
    return float(d.sum() / (n * (n - 1)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two (N, D) feature sets (FID's formula)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def image_retrieval_score(generated: np.ndarray, reference: np.ndarray) -> float:
    """Share of reference images that are the nearest neighbour (Euclidean) of at least one generated
    image. A collapsed generator keeps hitting the same few references: low IRS."""
    d = ((generated[:, None, :] - reference[None, :, :]) ** 2).sum(-1)  # (G, R)
    return len(np.unique(d.argmin(axis=1))) / reference.shape[0]


def ssim_diversity(images: torch.Tensor) -> float:
    """1 - mean pairwise SSIM among one prompt's (N, 3, H, W) images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    n = images.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    kernel = 11 if min(images.shape[-2:]) > 32 else 7
    value = ssim(images[i].float(), images[j].float(), data_range=1.0, kernel_size=kernel, reduction="none")
    return float(1 - value.mean())


def mode_statistics(modes: np.ndarray, valid: np.ndarray, num_modes: int) -> dict[str, float]:
    """Coverage (distinct valid modes / modes) and normalised entropy of the valid-mode histogram."""
    hist = np.bincount(modes[valid & (modes >= 0)], minlength=num_modes).astype(float)
    total = hist.sum()
    if total == 0:
        return {"mode_coverage": 0.0, "mode_entropy": 0.0}
    p = hist[hist > 0] / total
    return {"mode_coverage": float((hist > 0).sum() / num_modes), "mode_entropy": float(-(p * np.log(p)).sum() / np.log(num_modes))}

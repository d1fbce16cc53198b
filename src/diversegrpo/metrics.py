"""Evaluation metrics: diversity, Frechet distance, IRS, SSIM diversity, and (toy) mode statistics."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from .creative import cosine_distances


def mean_pairwise(d: torch.Tensor) -> float:
    """Mean of an (N, N) distance matrix over the pairs i != j (its diagonal is 0)."""
    n = d.shape[0]
    return float(d.sum() / (n * (n - 1)))


def mean_pairwise_distance(embeddings: torch.Tensor) -> float:
    """Mean of d_ij = 1 - cos(e_i, e_j) over pairs i != j of one prompt's (N, D) embeddings."""
    return mean_pairwise(cosine_distances(embeddings))


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


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) normalised Gaussian window of SSIM (Wang et al. 2004)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(N,) SSIM of (N, C, H, W) image pairs: Gaussian-weighted local statistics on reflection-padded
    images, averaged over every pixel and channel (torchmetrics' convention, which the tests check it
    against). Our own lines because importing torchmetrics took 11 of an evaluate job's 12 s."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    window = gaussian_window(size, sigma).to(a)[None, None].expand(c, 1, size, size)  # (C, 1, k, k)

    def blur(x: torch.Tensor) -> torch.Tensor:
        pad = (size - 1) // 2
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        return torch.nn.functional.conv2d(padded, window, groups=c)  # (N, C, H, W)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = (blur(a * a) - mu_a**2).clamp_min(0), (blur(b * b) - mu_b**2).clamp_min(0)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1).float()


def ssim_diversity(images: torch.Tensor) -> float:
    """1 - mean pairwise SSIM among one prompt's (N, 3, H, W) images in [0, 1]."""
    n = images.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    return float(1 - ssim(images[i], images[j]).mean())


def mode_statistics(modes: np.ndarray, valid: np.ndarray, num_modes: int) -> dict[str, float]:
    """Coverage (distinct valid modes / modes) and normalised entropy of the valid-mode histogram."""
    hist = np.bincount(modes[valid & (modes >= 0)], minlength=num_modes).astype(float)
    total = hist.sum()
    if total == 0:
        return {"mode_coverage": 0.0, "mode_entropy": 0.0}
    p = hist[hist > 0] / total
    return {
        "mode_coverage": float((hist > 0).sum() / num_modes),
        "mode_entropy": float(-(p * np.log(p)).sum() / np.log(num_modes)),
    }

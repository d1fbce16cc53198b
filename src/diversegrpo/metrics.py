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


def _blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """SSIM's Gaussian-weighted local mean of (N, C, H, W) float64 images on reflection-padded borders: the 2-D
    window is the outer product of a 1-D one, applied as two 1-D passes (the same sums, 2k instead of k^2
    products per pixel)."""
    c, pad = x.shape[1], (size - 1) // 2
    g = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (g / sigma) ** 2)
    g = (g / g.sum()).to(x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = torch.nn.functional.conv2d(padded, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
    return torch.nn.functional.conv2d(rows, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)  # (N, C, H, W)


def _ssim_index(mu_a, mu_b, sq_a, sq_b, cross, data_range: float) -> torch.Tensor:
    """(N,) SSIM from the blurred images (mu), blurred squares (sq) and the blurred product of each pair."""
    var_a, var_b = (sq_a - mu_a**2).clamp_min(0), (sq_b - mu_b**2).clamp_min(0)
    cov = cross - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1).float()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(N,) SSIM of (N, C, H, W) image pairs: Gaussian-weighted local statistics on reflection-padded
    images, averaged over every pixel and channel (torchmetrics' convention, which the tests check it
    against). Our own lines because importing torchmetrics took 11 of an evaluate job's 12 s."""
    a, b = a.double(), b.double()
    return _ssim_index(_blur(a, size, sigma), _blur(b, size, sigma), _blur(a * a, size, sigma),
                       _blur(b * b, size, sigma), _blur(a * b, size, sigma), data_range)


def ssim_diversity(images: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> float:
    """1 - mean pairwise SSIM among one prompt's (N, 3, H, W) images in [0, 1]. Each image's own blurred
    statistics are computed once (not once per pair): only the pair's product is blurred per pair."""
    n = images.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    x = images.double()
    mu, sq = _blur(x, size, sigma), _blur(x * x, size, sigma)
    cross = _blur(x[i] * x[j], size, sigma)
    return float(1 - _ssim_index(mu[i], mu[j], sq[i], sq[j], cross, data_range).mean())


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


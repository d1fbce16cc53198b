"""Worlds: sets of captions whose images can be judged by construction, so that mode collapse is measured
against ground truth rather than against a learned classifier.

A world is a registered component like a reward or a feature extractor (`registry.WORLDS`), chosen by
`captions.source: <its name>`. Then

- the captions stage splits the world's `captions()`;
- a synthetic world (`synthetic = True`) pre-trains the toy backbone on its true images
  (`sample_images`), whose text encoder has one learned vector per word of its `vocabulary()`, and its true
  images are the reference of the evaluation's `fd_world`;
- training logs, training curves and the evaluate stage add its ground truth from `label`: the valid share,
  the mode coverage and the mode entropy of each prompt's images.

A world names the reward kinds that understand its captions only (`rewards`): the config check refuses them
with any other captions.source. A world's module must import without torch (the
Snakefile's validation counts its captions; it never imports torch), so torch is imported where it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


class Labels(Protocol):
    """Ground truth of B generated images against their captions."""

    mode: np.ndarray  # (B,) int: index into the world's `modes`; -1 where no mode is recognised
    num_modes: int

    @property
    def valid(self) -> np.ndarray:  # (B,) bool: the image shows what its caption asks for
        ...


class World:
    """The interface; a world subclasses it and is registered in registry.WORLDS."""

    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]  # the ways an image of one caption may look, each equally good
    rewards: ClassVar[tuple[str, ...]] = ()  # reward kinds that score this world's captions only
    synthetic: ClassVar[bool] = False  # True: sample_images, vocabulary and words are defined
    image_size: ClassVar[int | None] = None  # side of a synthetic world's images, pixels

    def captions(self) -> list[str]:
        """Every caption of the world, in a fixed order."""
        raise NotImplementedError

    def label(self, images: "torch.Tensor", prompts: list[str]) -> Labels:
        """Ground truth of (B, 3, H, W) images in [0, 1] generated for `prompts`."""
        raise NotImplementedError

    def sample_images(self, prompts: list[str], rng: np.random.Generator) -> "torch.Tensor":
        """(B, 3, H, W) true images in [0, 1] of `prompts`, each mode equally likely (synthetic worlds)."""
        raise NotImplementedError(f"world {self.name!r} has no true images (it is not synthetic)")

    def vocabulary(self) -> list[str]:
        """The words of its captions that the toy backbone's text encoder knows (synthetic worlds)."""
        raise NotImplementedError(f"world {self.name!r} has no vocabulary (it is not synthetic)")

    def words(self, prompt: str) -> list[str]:
        """The vocabulary words of one caption, always the same number of them (synthetic worlds)."""
        raise NotImplementedError(f"world {self.name!r} has no vocabulary (it is not synthetic)")

"""A second synthetic world, installed by the tests only (tests/test_second_world.py) as another package
would: through entry points (dots_world-0.1.dist-info/entry_points.txt), with no edit to diversegrpo.

Caption "a red dot": a dot of the caption's colour at the centre of a dark or a light background (the two
modes, equally likely). Its reward prefers light backgrounds, so that GRPO has a mode to collapse onto."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diversegrpo.worlds import World

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.85, 0.1)}
BACKGROUNDS = (0.1, 0.9)  # grey levels of the modes
SIZE, DOT = 16, slice(6, 10)


@dataclass
class DotLabels:
    mode: np.ndarray  # (B,) int
    valid: np.ndarray  # (B,) bool
    num_modes: int = len(BACKGROUNDS)


class DotsWorld(World):
    name = "dots"
    modes = ("dark", "light")
    rewards = ("dots_light",)
    synthetic = True
    image_size = SIZE

    def captions(self) -> list[str]:
        return [f"a {colour} dot" for colour in COLOURS]

    def vocabulary(self) -> list[str]:
        return list(COLOURS)

    def words(self, prompt: str) -> list[str]:
        return [prompt.split()[1]]

    def sample_images(self, prompts, rng):
        import torch

        images = np.empty((len(prompts), 3, SIZE, SIZE), np.float32)
        for image, prompt, mode in zip(images, prompts, rng.integers(0, 2, len(prompts))):
            image[:] = BACKGROUNDS[mode]
            image[:, DOT, DOT] = np.array(COLOURS[self.words(prompt)[0]])[:, None, None]
        return torch.from_numpy(images)

    def label(self, images, prompts) -> DotLabels:
        import torch

        images = images.detach().float().cpu()
        border = images[:, :, 0, :].mean(dim=(1, 2)).numpy()  # (B,)
        mode = np.where(border < 0.3, 0, np.where(border > 0.7, 1, -1))
        centre = images[:, :, DOT, DOT].mean(dim=(2, 3))  # (B, 3)
        nearest = torch.cdist(centre, torch.tensor(list(COLOURS.values()))).argmin(dim=1).numpy()
        wanted = np.array([list(COLOURS).index(self.words(p)[0]) for p in prompts])
        return DotLabels(mode=mode, valid=(mode >= 0) & (nearest == wanted))


class LightReward:
    """The mean brightness of the border: light backgrounds score higher."""

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "LightReward":
        return cls()

    def __call__(self, images, prompts):
        return images.detach().float().cpu()[:, :, 0, :].mean(dim=(1, 2))

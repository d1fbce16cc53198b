"""The embedded default's synthetic world: coloured shapes, each caption with four equally likely modes.

Caption "a red disc" -> a red disc on a dark background in one of four quadrants (the modes), with a
pixel of jitter. Every generated image can be labelled by construction: its mode is the quadrant of
its foreground centroid; it is valid when the foreground's colour and shape match the caption. No
learned classifier is involved, so mode collapse is measured against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("square", "disc", "cross", "frame")
MODES = ("top-left", "top-right", "bottom-left", "bottom-right")
BACKGROUND = 0.08
IMAGE_SIZE = 16
RADIUS = 3  # shapes fill a 7 x 7 box
# Each mode is one 8 x 8 quadrant and the jitter keeps the shape inside it, so that with the toy
# backbone's 8-pixel patches one token holds one whole object.
_CENTRES = {"top-left": (4, 4), "top-right": (4, 12), "bottom-left": (12, 4), "bottom-right": (12, 12)}
JITTER = (-1, 0)
_FOREGROUND_THRESHOLD = 0.25  # colour distance from the background
_MIN_AREA = 8  # pixels; less is "no object"


def _template(shape: str) -> np.ndarray:
    """(7, 7) bool mask of a shape."""
    yy, xx = np.mgrid[-RADIUS : RADIUS + 1, -RADIUS : RADIUS + 1]
    if shape == "square":
        return np.ones_like(yy, dtype=bool)
    if shape == "disc":
        return yy**2 + xx**2 <= RADIUS**2 + 1
    if shape == "cross":
        return (yy == 0) | (xx == 0)
    if shape == "frame":
        return np.maximum(np.abs(yy), np.abs(xx)) == RADIUS
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


TEMPLATES = {shape: _template(shape) for shape in SHAPES}


def captions() -> list[dict]:
    """All captions of the world, in a fixed order."""
    return [
        {"prompt": f"a {colour} {shape}", "colour": colour, "shape": shape}
        for colour in COLOURS
        for shape in SHAPES
    ]


def parse(prompt: str) -> tuple[str, str]:
    """(colour, shape) of a world caption; ValueError for anything else."""
    words = prompt.lower().split()
    colour = [w for w in words if w in COLOURS]
    shape = [w for w in words if w in SHAPES]
    if len(colour) != 1 or len(shape) != 1:
        raise ValueError(
            f"toy-world prompt {prompt!r} must name exactly one colour of {sorted(COLOURS)} "
            f"and one shape of {list(SHAPES)}"
        )
    return colour[0], shape[0]


def render(colour: str, shape: str, mode: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(3, 16, 16) float32 image in [0, 1]."""
    image = np.full((3, IMAGE_SIZE, IMAGE_SIZE), BACKGROUND, dtype=np.float32)
    cy, cx = _CENTRES[MODES[mode]]
    cy, cx = cy + offset[0], cx + offset[1]
    box = (slice(cy - RADIUS, cy + RADIUS + 1), slice(cx - RADIUS, cx + RADIUS + 1))
    mask = TEMPLATES[shape]
    for c, value in enumerate(COLOURS[colour]):
        image[c][box][mask] = value
    return image


def sample_images(prompts: list[str], rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """(B, 3, 16, 16) true world images for `prompts` with uniformly drawn modes, and the (B,) modes."""
    modes = rng.integers(0, len(MODES), size=len(prompts))
    offsets = rng.choice(JITTER, size=(len(prompts), 2))
    images = [render(*parse(p), int(m), tuple(o)) for p, m, o in zip(prompts, modes, offsets)]
    return torch.from_numpy(np.stack(images)), modes


@dataclass
class Labels:
    mode: np.ndarray  # (B,) int: index into MODES, -1 where no object was found
    colour_ok: np.ndarray  # (B,) bool
    shape_ok: np.ndarray  # (B,) bool
    centroid: np.ndarray  # (B, 2) float (y, x) in pixels; image centre where no object

    @property
    def valid(self) -> np.ndarray:
        return (self.mode >= 0) & self.colour_ok & self.shape_ok


def foreground(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels far enough from the background colour."""
    return (images - BACKGROUND).norm(dim=1) > _FOREGROUND_THRESHOLD


def label(images: torch.Tensor, prompts: list[str]) -> Labels:
    """Ground-truth labels of generated (B, 3, 16, 16) images in [0, 1] against their captions."""
    images = images.detach().float().cpu().clamp(0, 1)
    masks = foreground(images).numpy()  # (B, H, W)
    palette = np.array(list(COLOURS.values()))  # (6, 3)
    n = len(prompts)
    mode, colour_ok, shape_ok = np.full(n, -1), np.zeros(n, bool), np.zeros(n, bool)
    centroid = np.full((n, 2), IMAGE_SIZE / 2 - 0.5)
    for i, (prompt, mask) in enumerate(zip(prompts, masks)):
        centre = object_centroid(mask)
        if centre is None:
            continue
        colour, shape = parse(prompt)
        cy, cx = centroid[i] = centre
        mode[i] = 2 * int(cy >= IMAGE_SIZE / 2) + int(cx >= IMAGE_SIZE / 2)
        mean_colour = images[i].numpy()[:, mask].mean(axis=1)
        colour_ok[i] = list(COLOURS)[int(np.argmin(((palette - mean_colour) ** 2).sum(1)))] == colour
        shape_ok[i] = _best_shape(mask, centre) == shape
    return Labels(mode=mode, colour_ok=colour_ok, shape_ok=shape_ok, centroid=centroid)


def object_centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(y, x) centroid in pixels of a (H, W) foreground mask, or None when it is too small to be an
    object. The labeller and the rewards' shape term find objects alike through this."""
    if mask.sum() < _MIN_AREA:
        return None
    ys, xs = np.nonzero(mask)
    return ys.mean(), xs.mean()


def shape_ious(mask: np.ndarray, centre: tuple[float, float]) -> dict[str, float]:
    """IoU of a (H, W) foreground mask with each shape's template centred at the pixel nearest
    `centre`; foreground outside the template's box counts against every shape."""
    padded = np.pad(mask, RADIUS + 1)
    cy, cx = (int(round(c)) + RADIUS + 1 for c in centre)
    window = padded[cy - RADIUS : cy + RADIUS + 1, cx - RADIUS : cx + RADIUS + 1]
    outside = mask.sum() - window.sum()
    return {s: float((window & t).sum() / ((window | t).sum() + outside)) for s, t in TEMPLATES.items()}


def _best_shape(mask: np.ndarray, centre: tuple[float, float]) -> str:
    """The template with the highest IoU against the mask, centred on the mask's centroid."""
    ious = shape_ious(mask, centre)
    return max(ious, key=ious.get)


def mode_histogram(modes: np.ndarray) -> np.ndarray:
    """(4,) counts of each mode (objects not found are left out)."""
    return np.bincount(modes[modes >= 0], minlength=len(MODES))

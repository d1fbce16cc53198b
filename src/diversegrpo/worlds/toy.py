"""The embedded default's synthetic world: coloured shapes, each caption with four equally likely modes.

Caption "a red disc" -> a red disc near the centre, with a pixel of jitter, on one of four dark
background tints (the modes). Every generated image can be labelled by construction: its mode is the
tint nearest its border's median colour (none when no tint is near, a muddled background); it is
valid when it has a mode and its foreground's colour and shape match the caption. No learned
classifier is involved, so mode collapse is measured against ground truth.

Why the background: a first world had the shape's quadrant as its mode. There, GRPO could not move
mode mass within the CPU budget, even with a perfect reward: choosing a quadrant is a
caption-specific, position-dependent pattern, so each rollout's log-prob gradient carries that choice
in a few of its 768 noise dimensions. A tint is one global direction shared by every caption, which a
bias-like change of the velocity selects, so 32 rollouts per step are enough to see it (measured with
the oracle reward: held-out mode entropy 0.95 -> 0.26 in 60 iterations, against 0.97 -> 0.96 for
quadrants). Real preference models have such global tastes too: palette, lighting, style.

Why some images are hazy: the quality a real base model leaves to fine-tuning comes from the poor images
in its pre-training data (a tail of hazy, dark or blurred photographs), which it learns to draw too. A
world of perfect images left its base model only its own rendering errors, mostly crosses drawn as blobs
by the evaluation ODE, and GRPO on the early steps did not remove those under that ODE. So HAZY_SHARE of
the world's images (its pre-training data, `ToyWorld.sample_images`) lie under a grey veil of a weight
drawn from HAZE: the whole image, like a tint, so that the choice is one global direction again. The
labeller finds no clean tint behind the veil, so a hazy image is never valid, and both toy rewards score
it low (little contrast, a washed-out colour). A lighter veil (0.6-0.75) left near half of the hazy
images scoring above 0.7: a defect the rewards cannot see is no headroom for GRPO, and there
DiverseGRPO kept 14 % hazy images where Flow-GRPO, whose preferred tint is no hazy background, kept 1 %.

Why a second, dim world (`toy_dim`): the veil is decided by the same first rollout steps as the mode, the steps
that DiverseGRPO's SA-Reg holds to the base model, so keeping the modes keeps some of the veil. In the dim world
DIM_SHARE of the images show their shape dim instead; the shape's brightness is decided by later steps than the
mode, as a real model's details are decided after its composition (docs/toy_world.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import World

if TYPE_CHECKING:
    import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("square", "disc", "cross", "frame")
# The modes: background tints, dark so that every caption colour stands out (colour distance >= 0.5
# from each) and >= 0.32 apart from each other.
TINTS: dict[str, tuple[float, float, float]] = {
    "black": (0.08, 0.08, 0.08),
    "teal": (0.05, 0.30, 0.32),
    "purple": (0.32, 0.05, 0.32),
    "olive": (0.32, 0.30, 0.05),
}
MODES = tuple(TINTS)
IMAGE_SIZE = 16
RADIUS = 3  # shapes fill a 7 x 7 box
CENTRE = 8
JITTER = (-1, 0)  # the shape never touches the border, which shows the background alone
_TINT_TOLERANCE = 0.12  # colour distance from a tint within which a border counts as that tint
FOREGROUND_THRESHOLD = 0.25  # colour distance from the image's background
_MIN_AREA = 8  # pixels; less is "no object"
HAZY_SHARE = 0.3  # of the pre-training images
HAZE = (0.7, 0.8)  # weight of a hazy image's grey veil, drawn uniformly: both rewards average 0.38 at 0.7, 0 at 0.8
_VEIL = 0.5  # the veil's grey
DIM_SHARE = 0.3  # of the pre-training images of the dim world (ToyDimWorld)
DIM = (0.6, 0.8)  # share of a dim shape's colour taken away, drawn uniformly
_FULL_COLOUR = 0.3  # the dim world's labeller: some object pixel this close to the caption's colour (the veil
# world's base model, its valid renders: 0.19 at the 99th percentile; every pixel of a dim shape is >= 0.5 away)


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


def render(colour: str, shape: str, mode: int, offset: tuple[int, int] = (0, 0), brightness: float = 1.0) -> np.ndarray:
    """(3, 16, 16) float32 image in [0, 1]; the shape's colour times `brightness`."""
    tint = np.array(TINTS[MODES[mode]], dtype=np.float32)
    image = np.repeat(np.repeat(tint[:, None, None], IMAGE_SIZE, axis=1), IMAGE_SIZE, axis=2)
    cy, cx = CENTRE + offset[0], CENTRE + offset[1]
    box = (slice(cy - RADIUS, cy + RADIUS + 1), slice(cx - RADIUS, cx + RADIUS + 1))
    mask = TEMPLATES[shape]
    for c, value in enumerate(COLOURS[colour]):
        image[c][box][mask] = value * brightness
    return image


def sample_images(
    prompts: list[str], rng: np.random.Generator, hazy_share: float = 0.0, dim_share: float = 0.0
) -> tuple[torch.Tensor, np.ndarray]:
    """(B, 3, 16, 16) true world images for `prompts` with uniformly drawn modes, and the (B,) modes;
    each hazy with probability `hazy_share`, and each shape dim with probability `dim_share`, as in the
    pre-training data of the world and of the dim world."""
    import torch

    n = len(prompts)
    modes = rng.integers(0, len(MODES), size=n)
    offsets = rng.choice(JITTER, size=(n, 2))
    brightness = np.ones(n)
    if dim_share > 0:  # no draw otherwise, as for the haze
        dim = rng.random(n) < dim_share
        brightness = np.where(dim, 1 - rng.uniform(*DIM, size=n), 1.0)
    images = np.stack(
        [render(*parse(p), int(m), tuple(o), b) for p, m, o, b in zip(prompts, modes, offsets, brightness)]
    )
    if hazy_share > 0:  # no draw otherwise: the clean images stay those of a world without haze
        hazy = rng.random(n) < hazy_share
        veil = np.where(hazy, rng.uniform(*HAZE, size=n), 0.0)[:, None, None, None]  # (B, 1, 1, 1)
        images = (images * (1 - veil) + _VEIL * veil).astype(np.float32)
    return torch.from_numpy(images), modes


@dataclass
class Labels:
    mode: np.ndarray  # (B,) int: index into MODES, -1 where no object or no clean background was found
    colour_ok: np.ndarray  # (B,) bool
    shape_ok: np.ndarray  # (B,) bool
    num_modes: int = len(MODES)

    @property
    def valid(self) -> np.ndarray:
        return (self.mode >= 0) & self.colour_ok & self.shape_ok


def background(images: torch.Tensor) -> torch.Tensor:
    """(B, 3) background colour of (B, 3, H, W) images: the median of their border pixels."""
    import torch

    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2)
    return border.median(dim=2).values


def background_distance(images: torch.Tensor, colours: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) colour distance of each pixel from its image's background colour ((B, 3) `colours`, by
    default `background(images)`; callers that also need it pass it, so it is found once)."""
    colours = background(images) if colours is None else colours
    return (images - colours[:, :, None, None]).norm(dim=1)


def foreground(images: torch.Tensor, colours: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) bool: pixels far enough from their image's background colour (`colours` as above)."""
    return background_distance(images, colours) > FOREGROUND_THRESHOLD


def tint_distances(colours: torch.Tensor) -> torch.Tensor:
    """(B, 4) colour distance of (B, 3) background colours to each mode's tint."""
    import torch

    return torch.cdist(colours.float(), torch.tensor(list(TINTS.values())))


def label(images: torch.Tensor, prompts: list[str], full_colour: bool = False) -> Labels:
    """Ground-truth labels of generated (B, 3, 16, 16) images in [0, 1] against their captions. With `full_colour`
    (the dim world's labeller), an object's colour is ok only if some pixel of it lies within _FULL_COLOUR of the
    caption's colour: a dim shape has none."""
    images = images.detach().float().cpu().clamp(0, 1)
    colours = background(images)  # (B, 3)
    masks = foreground(images, colours).numpy()  # (B, H, W)
    distances = tint_distances(colours)  # (B, 4)
    nearest = distances.argmin(dim=1).numpy()
    clean = (distances.min(dim=1).values < _TINT_TOLERANCE).numpy()
    palette = np.array(list(COLOURS.values()))  # (4, 3)
    n = len(prompts)
    mode, colour_ok, shape_ok = np.full(n, -1), np.zeros(n, bool), np.zeros(n, bool)
    for i, (prompt, mask) in enumerate(zip(prompts, masks)):
        centre = object_centroid(mask)
        if centre is None:
            continue
        colour, shape = parse(prompt)
        mode[i] = nearest[i] if clean[i] else -1
        pixels = images[i].numpy()[:, mask]  # (3, P)
        colour_ok[i] = list(COLOURS)[int(np.argmin(((palette - pixels.mean(axis=1)) ** 2).sum(1)))] == colour
        if full_colour:
            target = np.array(COLOURS[colour], dtype=np.float32)
            colour_ok[i] &= np.linalg.norm(pixels.T - target, axis=1).min() < _FULL_COLOUR
        shape_ok[i] = _best_shape(mask, centre) == shape
    return Labels(mode=mode, colour_ok=colour_ok, shape_ok=shape_ok)


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


class ToyWorld(World):
    """The embedded default's world, as the pipeline sees it (`captions.source: toy`)."""

    name = "toy"
    modes = MODES
    rewards = ("toy_colour", "toy_contrast", "toy_oracle")  # they parse the caption's colour and shape
    synthetic = True
    image_size = IMAGE_SIZE

    def captions(self) -> list[str]:
        return [c["prompt"] for c in captions()]

    def label(self, images: torch.Tensor, prompts: list[str]) -> Labels:
        return label(images, prompts)

    def sample_images(self, prompts: list[str], rng: np.random.Generator) -> torch.Tensor:
        return sample_images(prompts, rng, HAZY_SHARE)[0]

    def vocabulary(self) -> list[str]:
        return [*COLOURS, *SHAPES]

    def words(self, prompt: str) -> list[str]:
        return list(parse(prompt))


class ToyDimWorld(ToyWorld):
    """The toy world with a defect decided after the mode (`captions.source: toy_dim`, config/dim.yaml): DIM_SHARE of
    the pre-training images show their shape dim (DIM of its colour taken away) instead of hazy. The mode, a tint
    of the whole background, is mostly chosen by the first rollout steps; the shape's brightness, 13-49 pixels, by
    later ones (docs/toy_world.md). A dim shape is not the caption's colour: its label is not colour_ok."""

    name = "toy_dim"

    def label(self, images: torch.Tensor, prompts: list[str]) -> Labels:
        return label(images, prompts, full_colour=True)

    def sample_images(self, prompts: list[str], rng: np.random.Generator) -> torch.Tensor:
        return sample_images(prompts, rng, dim_share=DIM_SHARE)[0]

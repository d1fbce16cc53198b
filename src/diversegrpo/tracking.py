"""Live monitoring of a run: its scalars and a few evaluation images, written as it goes.

    DIVERSEGRPO_TRACKER=tensorboard   the default: event files in DIR/tensorboard/, offline
                                      (`tensorboard --logdir results/runs`)
    DIVERSEGRPO_TRACKER=wandb         Weights & Biases (`pip install wandb`; WANDB_PROJECT, WANDB_ENTITY,
                                      WANDB_MODE=offline ... are wandb's own variables)
    DIVERSEGRPO_TRACKER=tensorboard,wandb   both
    DIVERSEGRPO_TRACKER=none          nothing

Trackers are not results: nothing here enters the config hash, log.parquet, curve.parquet or the LoRA,
and nothing here draws a random number or changes a tensor the run uses (the grid of images is a new,
resized copy). Only the main process tracks. A tracker that fails mid-run (disk full, a wandb error) says
so once on stderr and stops; the run goes on.

Resumed runs: the run resumes at iteration k from its checkpoint, so the events it wrote past k before it
was stopped are discarded. TensorBoard's writer opens with purge_step=k (a SessionLog START at step k:
TensorBoard drops the earlier events at steps >= k), and the checkpoint's evaluation at k is written
again; W&B keeps one run across resumes (its id is kept in DIR/wandb/) and ignores steps it has already
seen, which a resumed run repeats with the same values (resumes are bit-identical on CPU).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import torch

ENV = "DIVERSEGRPO_TRACKER"
DEFAULT = "tensorboard"
BACKENDS = ("tensorboard", "wandb", "none")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
GRID_PROMPTS, GRID_IMAGES = 4, 4  # the evaluation images shown: the first prompts x their first images
TILE_MAX, TILE_MIN = 256, 128  # a tile's longest side, pixels: paper images shrunk, toy images enlarged


def scalars(row: dict) -> dict[str, float]:
    """The numeric columns of a log / curve row (the step, `iteration`, aside) as floats."""
    out = {}
    for key, value in row.items():
        if key == "iteration":
            continue
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (numbers.Real, np.number)):
            out[key] = float(value)
    return out


def grid(images: torch.Tensor, per_prompt: int, prompts: int = GRID_PROMPTS, per_row: int = GRID_IMAGES,
         pad: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: the first `prompts` prompts (rows) x their first `per_row` images (columns), of
    evaluation images (P * per_prompt, 3, h, w) in [0, 1], prompt-major as Run.evaluate makes them."""
    from .io import to_uint8

    n_prompts = min(prompts, images.shape[0] // per_prompt)
    n_images = min(per_row, per_prompt)
    index = [p * per_prompt + j for p in range(n_prompts) for j in range(n_images)]
    tiles = images[index].detach().float().cpu()
    side = max(tiles.shape[-2:])
    if side > TILE_MAX:
        size = [round(s * TILE_MAX / side) for s in tiles.shape[-2:]]
        tiles = torch.nn.functional.interpolate(tiles, size=size, mode="bilinear", antialias=True,
                                                align_corners=False)
    elif side < TILE_MIN:
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=math.ceil(TILE_MIN / side), mode="nearest")
    tiles = to_uint8(tiles).permute(0, 2, 3, 1).numpy()  # (n, h, w, 3)
    h, w = tiles.shape[1:3]
    out = np.full((n_prompts * (h + pad) - pad, n_images * (w + pad) - pad, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, n_images)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tile
    return out


class Tracker:
    """No tracking (DIVERSEGRPO_TRACKER=none, and every process but the main one)."""

    def log_row(self, section: str, row: dict) -> None:
        """One row of the run's log ("train") or curve ("eval"), at step row["iteration"]."""

    def log_images(self, step: int, images: torch.Tensor, per_prompt: int, prompts: list[str]) -> None:
        """A grid of a few evaluation images (see `grid`) and, the first time, their prompts."""

    def close(self) -> None:
        pass


class Guarded(Tracker):
    """A backend whose failures never end the run: the first one is reported and tracking stops."""

    def __init__(self, backend: Tracker, name: str):
        self.backend, self.name = backend, name

    def _call(self, method: str, *args) -> None:
        if self.backend is None:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as e:  # noqa: BLE001 (monitoring is not the run: it must not end a day-long run)
            print(f"note: {self.name} tracking stopped ({type(e).__name__}: {e}); the run goes on", file=sys.stderr)
            backend, self.backend = self.backend, None
            try:
                backend.close()
            except Exception:  # noqa: BLE001, S110
                pass

    def log_row(self, section, row):
        self._call("log_row", section, row)

    def log_images(self, step, images, per_prompt, prompts):
        self._call("log_images", step, images, per_prompt, prompts)

    def close(self):
        self._call("close")
        self.backend = None


class Several(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_row(self, section, row):
        for t in self.trackers:
            t.log_row(section, row)

    def log_images(self, step, images, per_prompt, prompts):
        for t in self.trackers:
            t.log_images(step, images, per_prompt, prompts)

    def close(self):
        for t in self.trackers:
            t.close()


class TensorBoard(Tracker):
    """Event files in `directory`, opened at the first event (a Run built and dropped writes nothing)."""

    def __init__(self, directory: Path, start: int):
        self.directory, self.start, self._writer, self._captioned = Path(directory), start, None, False

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: the steps >= start written before a resume are discarded, not shown twice
            self._writer = SummaryWriter(str(self.directory), purge_step=self.start, flush_secs=10)
        return self._writer

    def log_row(self, section, row):
        step = int(row["iteration"])
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"{section}/{key}", value, step)
        if section == "eval":
            self.writer.flush()  # an evaluation is worth seeing at once; iterations flush every 10 s

    def log_images(self, step, images, per_prompt, prompts):
        self.writer.add_image("eval/samples", grid(images, per_prompt), step, dataformats="HWC")
        if not self._captioned:
            shown = prompts[: GRID_PROMPTS * per_prompt : per_prompt]
            text = "Rows of eval/samples, first images of each:\n\n" + "\n".join(f"{i + 1}. {p}"
                                                                                 for i, p in enumerate(shown))
            self.writer.add_text("eval/samples_prompts", text, step)
            self._captioned = True
        self.writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandB(Tracker):
    """A W&B run, one across resumes: its id is kept in DIR/wandb/diversegrpo_run_id. wandb's own
    variables (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_API_KEY ...) configure it; the project
    defaults to "diversegrpo"."""

    ID_FILE = "diversegrpo_run_id"

    def __init__(self, out: Path, start: int, config: dict | None):
        self.out, self.start, self.config, self._run = Path(out), start, config, None

    @property
    def run(self):
        if self._run is None:
            import wandb

            directory = self.out / "wandb"
            directory.mkdir(parents=True, exist_ok=True)
            id_file = directory / self.ID_FILE
            if self.start > 0 and id_file.is_file():  # a resumed run continues its W&B run
                run_id = id_file.read_text().strip()
            else:  # uuid4 reads os.urandom: no random generator of the run's is touched
                run_id = uuid.uuid4().hex[:16]
                id_file.write_text(run_id + "\n")
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "diversegrpo"), id=run_id, resume="allow",
                name="/".join(self.out.parts[-3:]), dir=str(self.out),
                # the settings, not the prompt lists (a paper run trains on thousands of prompts)
                config={k: v for k, v in (self.config or {}).items() if k not in ("train_prompts", "eval_prompts")},
            )
        return self._run

    def log_row(self, section, row):
        self.run.log({f"{section}/{k}": v for k, v in scalars(row).items()}, step=int(row["iteration"]))

    def log_images(self, step, images, per_prompt, prompts):
        import wandb

        caption = " | ".join(prompts[: GRID_PROMPTS * per_prompt : per_prompt])
        self.run.log({"eval/samples": wandb.Image(grid(images, per_prompt), caption=caption)}, step=step)

    def close(self):
        if self._run is not None:
            self._run.finish()
            self._run = None


def chosen(environ=None) -> list[str]:
    """The backends DIVERSEGRPO_TRACKER names (comma-separated), checked: known and importable. Unset, it
    is TensorBoard when its package is installed (a declared dependency), else nothing."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if not value:
        return [DEFAULT] if importlib.util.find_spec(PACKAGES[DEFAULT]) is not None else []
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"{ENV}={value!r}: unknown tracker {unknown}; use one of {', '.join(BACKENDS)} "
                         f"(or several, comma-separated)")
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"{ENV}={value!r}: 'none' cannot be combined with other trackers")
        return []
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ModuleNotFoundError(
                f"{ENV}={value!r} asks for {name} tracking but the {PACKAGES[name]!r} package is not installed: "
                f"`pip install {PACKAGES[name]}`, or set {ENV}=none (or another tracker)"
            )
    return names


def open_tracker(out: Path, start: int = 0, main: bool = True, config: dict | None = None,
                 curve: list[dict] | None = None) -> Tracker:
    """The tracker of a run writing `out`, resumed at iteration `start` (0: a fresh run). The choice is
    checked on every process (a bad DIVERSEGRPO_TRACKER fails everywhere, before any work); only the main
    process gets a tracker that writes. `curve`: the checkpoint's curve rows, the one at `start` written
    again (the resumed writer discards steps >= start)."""
    names = chosen()
    if main and not names and not os.environ.get(ENV, "").strip():
        print(f"note: no live tracking: the {PACKAGES[DEFAULT]!r} package is not installed "
              f"(`pip install {PACKAGES[DEFAULT]}`; {ENV}=none silences this)", file=sys.stderr)
    if not main or not names:
        return Tracker()
    backends = {"tensorboard": lambda: TensorBoard(Path(out) / "tensorboard", start),
                "wandb": lambda: WandB(Path(out), start, config)}
    trackers = [Guarded(backends[name](), name) for name in names]
    tracker = trackers[0] if len(trackers) == 1 else Several(trackers)
    for row in curve or []:
        if start > 0 and row["iteration"] >= start:
            tracker.log_row("eval", row)
    return tracker

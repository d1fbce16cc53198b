"""The caption stage: the world's captions (toy) or a user's prompt file, split into train / eval."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .. import world
from ..io import write_parquet


class CaptionError(ValueError):
    pass


def prompt_id(prompt: str) -> str:
    """Stable id: the same prompt has the same id in every run, config and machine."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def read_prompts(path: str | Path, max_chars: int = 300) -> list[str]:
    """Prompts from a .txt (one per line), .csv or .parquet (a `prompt` column) file.

    Normalisation (documented, not silent): surrounding whitespace is stripped and blank lines are
    skipped. Errors: unreadable or non-UTF-8 file, no prompts, duplicates, prompts over `max_chars`.
    """
    path = Path(path)
    if not path.exists():
        raise CaptionError(f"caption file {path} does not exist")
    if path.suffix == ".txt":
        try:
            raw = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CaptionError(f"caption file {path} is not UTF-8 (byte {e.start}): re-encode it as UTF-8") from None
        prompts = raw.splitlines()
    elif path.suffix in (".csv", ".parquet"):
        try:
            table = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
        except UnicodeDecodeError:
            raise CaptionError(f"caption file {path} is not UTF-8: re-encode it as UTF-8") from None
        if "prompt" not in table.columns:
            raise CaptionError(f"caption file {path} needs a 'prompt' column; found {list(table.columns)}")
        prompts = [str(p) for p in table["prompt"].tolist()]
    else:
        raise CaptionError(f"caption file {path} must end in .txt, .csv or .parquet")
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise CaptionError(f"caption file {path} holds no prompts")
    long = [i for i, p in enumerate(prompts) if len(p) > max_chars]
    if long:
        raise CaptionError(f"caption file {path}: {len(long)} prompt(s) longer than {max_chars} characters (first: #{long[0]})")
    counts = pd.Series(prompts).value_counts()
    dupes = counts[counts > 1].index.tolist()
    if dupes:
        raise CaptionError(f"caption file {path}: {len(dupes)} duplicate prompt(s), e.g. {dupes[0]!r}")
    return prompts


def split(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded permutation; at least one prompt on each side."""
    if len(prompts) < 2:
        raise CaptionError(f"need at least 2 prompts to hold some out for evaluation, got {len(prompts)}")
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_eval = min(len(prompts) - 1, max(1, round(eval_fraction * len(prompts))))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def make_captions(source: str, eval_fraction: float, seed: int, max_chars: int, train_path, eval_path) -> None:
    prompts = [c["prompt"] for c in world.captions()] if source == "toy" else read_prompts(source, max_chars)
    train, held_out = split(prompts, eval_fraction, seed)
    for name, subset, path in (("train", train, train_path), ("eval", held_out, eval_path)):
        table = pd.DataFrame({"prompt_id": [prompt_id(p) for p in subset], "prompt": subset, "split": name})
        write_parquet(table, path)

"""The caption stage: the world's captions (toy) or a user's prompt file, split into train / eval.

A user's prompt file is `captions.source` in the config: `.txt` (one prompt per line), `.csv` or
`.parquet` (a `prompt` column; other columns are ignored). `read_prompts` reads it the same way in the
Snakefile's config validation (before any stage runs) and in the caption stage.

Normalisation (the only changes made to a prompt; `prompt_id` hashes the result):
- the file is decoded as UTF-8; a UTF-8 byte-order mark at its start is dropped;
- each prompt is Unicode-normalised to NFC (so that "café" typed two ways is one prompt) and stripped
  of surrounding whitespace; whitespace inside a prompt is kept as it is;
- empty prompts (blank lines, empty CSV cells) are skipped.
Everything else is an error that names the file, the line or row, and what to do, never a silent fix:
- a file that is not UTF-8 (the byte offset is given), a missing `prompt` column, null or non-text
  cells in a `.parquet` `prompt` column;
- control characters inside a prompt (a binary file, or a CSV cell spanning several lines);
- a prompt longer than `max_chars` characters (`captions.max_prompt_chars`): never truncated;
- duplicate prompts (after normalisation): each prompt must appear once, or the train / eval split and
  the per-prompt metrics would count it twice;
- no prompts at all, or fewer than 2 (one is needed on each side of the split).
This module imports no torch: the config validation reads caption files with it in a second.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import numpy as np

from ..config import split_sizes


class CaptionError(ValueError):
    pass


def prompt_id(prompt: str) -> str:
    """Stable id: the same prompt has the same id in every run, config and machine."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def _raw_prompts(path: Path) -> tuple[list, str]:
    """The file's prompt cells, in order, and what a position in it is called (line / row)."""
    if path.suffix == ".txt":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CaptionError(f"caption file {path} is not UTF-8 (byte {e.start}): re-encode it as UTF-8") from None
        return text.removeprefix("\ufeff").splitlines(), "line"
    import pandas as pd

    if path.suffix == ".csv":
        try:
            table = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
        except UnicodeDecodeError as e:
            raise CaptionError(f"caption file {path} is not UTF-8 (byte {e.start}): re-encode it as UTF-8") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise CaptionError(f"caption file {path} is not a readable CSV with a 'prompt' column header: {e}") from None
        kind = "row"  # 1-based data rows (the header is not counted)
    elif path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a broken file)
            raise CaptionError(f"caption file {path} is not a readable Parquet file: {e}") from None
        kind = "row"
    else:
        raise CaptionError(f"caption file {path} must end in .txt, .csv or .parquet")
    if "prompt" not in table.columns:
        raise CaptionError(f"caption file {path} needs a 'prompt' column; found {list(table.columns)}")
    return table["prompt"].tolist(), kind


def read_prompts(path: str | Path, max_chars: int = 300) -> list[str]:
    """Prompts from a .txt (one per line), .csv or .parquet (a `prompt` column) file, normalised and
    checked as the module docstring says; raises CaptionError with the file, the line / row and the fix."""
    path = Path(path)
    if not path.exists():
        raise CaptionError(f"caption file {path} does not exist")
    cells, kind = _raw_prompts(path)
    prompts, where = [], []
    for number, cell in enumerate(cells, start=1):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            raise CaptionError(f"caption file {path}: {kind} {number} has no prompt (null); remove the row or fill it")
        if isinstance(cell, bytes):
            try:
                cell = cell.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CaptionError(f"caption file {path}: {kind} {number} is not UTF-8 (byte {e.start}): re-encode it as UTF-8") from None
        if not isinstance(cell, str):
            raise CaptionError(f"caption file {path}: {kind} {number} holds {type(cell).__name__} {cell!r}, not text")
        prompt = unicodedata.normalize("NFC", cell).strip()
        if not prompt:
            continue
        control = [c for c in prompt if unicodedata.category(c) == "Cc" and c != "\t"]
        if control:
            raise CaptionError(
                f"caption file {path}: {kind} {number} holds control character U+{ord(control[0]):04X} "
                f"(a binary file, or a CSV cell spanning lines?); one prompt per {kind}, plain text"
            )
        if len(prompt) > max_chars:
            raise CaptionError(
                f"caption file {path}: {kind} {number} is {len(prompt)} characters long, over the limit of {max_chars} "
                f"(captions.max_prompt_chars); shorten it or raise the limit: prompts are never truncated"
            )
        prompts.append(prompt)
        where.append(number)
    if not prompts:
        raise CaptionError(f"caption file {path} holds no prompts (empty, or only blank {kind}s)")
    first: dict[str, int] = {}
    dupes = []
    for prompt, number in zip(prompts, where):
        if prompt in first:
            dupes.append(f"{prompt!r} ({kind}s {first[prompt]} and {number})")
        else:
            first[prompt] = number
    if dupes:
        raise CaptionError(f"caption file {path}: {len(dupes)} duplicate prompt(s), e.g. {dupes[0]}; each prompt must appear once")
    return prompts


def split(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded permutation; at least one prompt on each side (sizes: config.split_sizes)."""
    if len(prompts) < 2:
        raise CaptionError(f"need at least 2 prompts to hold some out for evaluation, got {len(prompts)}")
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_eval = split_sizes(len(prompts), eval_fraction)[1]
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def make_captions(source: str, eval_fraction: float, seed: int, max_chars: int, train_path, eval_path) -> None:
    import pandas as pd

    from .. import world
    from ..io import write_parquet

    prompts = [c["prompt"] for c in world.captions()] if source == "toy" else read_prompts(source, max_chars)
    train, held_out = split(prompts, eval_fraction, seed)
    for name, subset, path in (("train", train, train_path), ("eval", held_out, eval_path)):
        table = pd.DataFrame({"prompt_id": [prompt_id(p) for p in subset], "prompt": subset, "split": name})
        write_parquet(table, path)

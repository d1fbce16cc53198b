"""The caption stage: the training and evaluation prompts, from the world's captions (toy) or prompt files.

Sources (`captions` in the config):
- `source` alone: the toy world's captions (`toy`) or a prompt file, split into train / eval by a seeded
  permutation (`eval_fraction` of the prompts held out, at least one on each side: split_sizes).
- `source` and `eval_source`: train on all of `source`, evaluate on all of `eval_source`, as Flow-GRPO
  trains on its train.txt and evaluates on its test.txt. `eval_fraction` must then be null (a number
  there would be silently unused), and `source` must be a file: the toy world's 16 captions are split.
  Evaluation prompts keep the file's order: `train.eval_prompts` and `sample.max_prompts` take its first.

A prompt file is `.txt` (one prompt per line), `.csv` or `.parquet` (a `prompt` column; other columns are
ignored). `read_prompts` reads it the same way in the Snakefile's config validation (before any stage
runs) and in the caption stage, and `choose` makes the same train / eval sets in both, so the counts the
validation checks are the stage's.

Normalisation (the only changes made to a prompt; `prompt_id` hashes the result):
- the file is decoded as UTF-8; a UTF-8 byte-order mark at its start is dropped;
- each prompt is Unicode-normalised to NFC (so that "café" typed two ways is one prompt) and stripped
  of surrounding whitespace; whitespace inside a prompt is kept as it is;
- empty prompts (blank lines, empty CSV cells) are skipped.
Length is no reason to refuse a prompt: real prompt sets hold long ones (Pick-a-Pic: 1,533 of Flow-GRPO's
25,432 training prompts exceed 300 characters), and the backbones' text encoders truncate them to their
token limits, as the models were trained to expect.

Duplicates are dropped, never an error, and every drop is counted in logs/captions.log. Two prompts are
duplicates when they are equal once every run of whitespace is one space (`duplicate_key`): CLIP's and
T5's tokenizers make the same tokens of both, so the models cannot tell them apart. The first one in the
file is kept, as written. Why drop rather than keep:
- training source: a repeated prompt would be drawn more often, and, split by eval_fraction, could land
  on both sides of the train / eval split;
- evaluation file: the metrics group images by prompt text (evaluation.per_prompt) and by prompt_id
  (stages/evaluate.py), so a repeated prompt would silently merge into one group of twice the images
  rather than count as two samples; for more images of a prompt, raise sample.images_per_prompt;
- a training prompt that is also an evaluation prompt (source vs eval_source) is dropped from training,
  so that the evaluation set is the file as given and is never trained on.

Everything else is an error that names the file, the line or row, and what to do, never a silent fix:
- a file that is not UTF-8 (the byte offset is given), a missing `prompt` column, null or non-text
  cells in a `.parquet` `prompt` column;
- control characters inside a prompt (a binary file, or a CSV cell spanning several lines);
- no prompts at all; fewer than 2 to split; no training prompt left once the evaluation's are removed.
This module imports no torch: the config validation reads caption files with it, 25k prompts in ~0.1 s.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Unicode category Cc (C0 and C1 controls) except TAB: a regex, not a per-character loop, so that
# 25k prompts are checked in milliseconds during config validation.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class CaptionError(ValueError):
    pass


def prompt_id(prompt: str) -> str:
    """Stable id: the same prompt has the same id in every run, config and machine."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def duplicate_key(prompt: str) -> str:
    """What two prompts share when the text encoders cannot tell them apart: runs of whitespace collapse
    to one space (CLIP's tokenizer and T5's SentencePiece both do so); case and punctuation count."""
    return " ".join(prompt.split())


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
            raise CaptionError(
                f"caption file {path} is not a readable CSV with a 'prompt' column header: {e}"
            ) from None
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


@dataclass(frozen=True)
class PromptFile:
    """A prompt file's normalised prompts in file order, duplicates included, and where each one is."""

    path: Path
    prompts: list[str]
    numbers: list[int]  # 1-based line (.txt) or data row (.csv / .parquet) of each prompt
    kind: str  # "line" or "row"


def read_prompt_file(path: str | Path) -> PromptFile:
    """Read and check a prompt file as the module docstring says; raises CaptionError with the file,
    the line / row and the fix."""
    path = Path(path)
    if not path.exists():
        raise CaptionError(f"caption file {path} does not exist")
    cells, kind = _raw_prompts(path)
    prompts, numbers = [], []
    for number, cell in enumerate(cells, start=1):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            raise CaptionError(f"caption file {path}: {kind} {number} has no prompt (null); remove the row or fill it")
        if isinstance(cell, bytes):
            try:
                cell = cell.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CaptionError(
                    f"caption file {path}: {kind} {number} is not UTF-8 (byte {e.start}): re-encode it as UTF-8"
                ) from None
        if not isinstance(cell, str):
            raise CaptionError(f"caption file {path}: {kind} {number} holds {type(cell).__name__} {cell!r}, not text")
        prompt = unicodedata.normalize("NFC", cell).strip()
        if not prompt:
            continue
        control = _CONTROL.search(prompt)
        if control:
            raise CaptionError(
                f"caption file {path}: {kind} {number} holds control character U+{ord(control.group()):04X} "
                f"(a binary file, or a CSV cell spanning lines?); one prompt per {kind}, plain text"
            )
        prompts.append(prompt)
        numbers.append(number)
    if not prompts:
        raise CaptionError(f"caption file {path} holds no prompts (empty, or only blank {kind}s)")
    return PromptFile(path, prompts, numbers, kind)


def read_prompts(path: str | Path) -> list[str]:
    """A prompt file's normalised prompts, in file order, duplicates included (see `unique`)."""
    return read_prompt_file(path).prompts


@dataclass
class Captions:
    """The caption stage's result: train and eval prompts, and what was dropped, for the log."""

    train: list[str]
    eval: list[str]
    notes: list[str] = field(default_factory=list)


def unique(source: PromptFile, label: str, notes: list[str]) -> tuple[list[str], list[str]]:
    """The file's prompts with later duplicates (same `duplicate_key`) dropped, and their keys; a note
    counts the dropped ones."""
    first: dict[str, int] = {}
    kept, keys, dropped = [], [], []
    for prompt, number in zip(source.prompts, source.numbers):
        key = duplicate_key(prompt)
        if key in first:
            dropped.append(f"{source.kind} {number} repeats {source.kind} {first[key]}: {prompt!r}")
        else:
            first[key] = number
            kept.append(prompt)
            keys.append(key)
    notes.append(f"{label} {source.path}: {len(source.prompts)} prompts, {len(dropped)} duplicate(s) dropped "
                 f"(equal once whitespace runs are one space; the first is kept), {len(kept)} kept")
    notes.extend(f"  dropped {d}" for d in dropped)
    return kept, keys


def choose(source: PromptFile | list[str], eval_source: PromptFile | None, eval_fraction: float | None,
           seed: int) -> Captions:
    """Train and eval prompts of `source` (a prompt file, or a world's caption list) and, when
    given, `eval_source`, as the module docstring says. Deterministic: the validation counts these."""
    notes: list[str] = []
    if isinstance(source, PromptFile):
        prompts, keys = unique(source, "captions.source", notes)
    else:
        prompts = list(source)
        notes.append(f"captions.source: a world's {len(prompts)} captions")
    if eval_source is None:
        if eval_fraction is None:
            raise CaptionError(
                "captions.eval_fraction is required (a number in (0, 1)) unless captions.eval_source is set"
            )
        if len(prompts) < 2 and isinstance(source, PromptFile):
            raise CaptionError(
                f"caption file {source.path} holds {len(prompts)} distinct prompt; at least 2 are needed "
                f"(one to train on, one to evaluate), or set captions.eval_source"
            )
        train, held_out = split(prompts, eval_fraction, seed)
        notes.append(
            f"split by captions.eval_fraction {eval_fraction} (seed {seed}): {len(train)} train, {len(held_out)} eval"
        )
        return Captions(train, held_out, notes)
    if not isinstance(source, PromptFile):
        raise CaptionError("captions.eval_source needs captions.source to be a prompt file; a world's captions "
                           "are split by captions.eval_fraction")
    if eval_fraction is not None:
        raise CaptionError(f"captions.eval_fraction {eval_fraction} is not used when captions.eval_source is set; "
                           "set captions.eval_fraction: null")
    held_out, held_out_keys = unique(eval_source, "captions.eval_source", notes)
    evaluated = set(held_out_keys)
    in_eval = [key in evaluated for key in keys]
    train = [p for p, drop in zip(prompts, in_eval) if not drop]
    overlap = [p for p, drop in zip(prompts, in_eval) if drop]
    notes.append(f"{len(overlap)} training prompt(s) also in captions.eval_source dropped from training "
                 f"(never train on an evaluation prompt): {len(train)} train, {len(held_out)} eval")
    notes.extend(f"  dropped {p!r}" for p in overlap)
    if not train:
        raise CaptionError(f"every prompt of captions.source {source.path} is also in captions.eval_source "
                           f"{eval_source.path}: no training prompt is left; use different files")
    return Captions(train, held_out, notes)


def split_sizes(n: int, eval_fraction: float) -> tuple[int, int]:
    """(train, eval) prompt counts of the caption stage's split of n prompts (at least one on each side).
    The config validation counts with it too (config.py imports this module, never the reverse)."""
    n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    return n - n_eval, n_eval


def split(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded permutation; at least one prompt on each side (sizes: split_sizes)."""
    if len(prompts) < 2:
        raise CaptionError(f"need at least 2 prompts to hold some out for evaluation, got {len(prompts)}")
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_eval = split_sizes(len(prompts), eval_fraction)[1]
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def make_captions(source: str, eval_source: str | None, eval_fraction: float | None, seed: int,
                  train_path, eval_path) -> Captions:
    """Write the train / eval caption tables; print what was read and dropped (the stage's log)."""
    import pandas as pd

    from ..io import write_parquet
    from ..registry import WORLDS, build_world

    train_source = build_world(source).captions() if source in WORLDS else read_prompt_file(source)
    captions = choose(train_source, read_prompt_file(eval_source) if eval_source else None, eval_fraction, seed)
    print(*captions.notes, sep="\n")
    for name, subset, path in (("train", captions.train, train_path), ("eval", captions.eval, eval_path)):
        table = pd.DataFrame({"prompt_id": [prompt_id(p) for p in subset], "prompt": subset, "split": name})
        write_parquet(table, path)
    return captions

"""Artifacts on disk: every write goes to a temporary sibling and is renamed into place, so a reader
(or a rerun after a kill) never sees a partial Parquet, safetensors or JSON file."""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch


def _umask() -> int:
    """The process's umask now (it may change after import): read from /proc where there is one, since
    os.umask can only be read by setting it, and a thread creating a file meanwhile would get the 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # the least permissive, should another thread create a file meanwhile
    os.umask(umask)
    return umask


def _follow_umask(path: str | os.PathLike) -> None:
    """Give an artifact the mode an ordinary open() / mkdir() would: 0666 (files) or 0777 (directories)
    & ~umask. mkstemp / mkdtemp make 0600 / 0700, and so does safetensors' own save_file (what diffusers'
    save_lora_weights calls): others on a shared cluster could not read the file."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _follow_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success its files are renamed into `path` one by one (each atomic)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp.", dir=path))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.suffix == ".safetensors":
                canonical_safetensors(f)  # e.g. diffusers' save_lora_weights: byte-stable adapters
            for inner in [f, *(f.rglob("*") if f.is_dir() else ())]:
                _follow_umask(inner)  # safetensors' save_file writes 0600
            os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class UnreadableArtifact(ValueError):
    """A pipeline artifact that exists but cannot be read (truncated, garbage, foreign): the message names
    the file, the library's error and how to rebuild it."""


def unreadable(what: str, path: str | os.PathLike, error: BaseException, rule: str | None = None) -> UnreadableArtifact:
    """'<what> <path> is unreadable (<error, one line>): delete it and rerun snakemake to rebuild it'."""
    detail = " ".join(f"{type(error).__name__}: {error}".split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    by = f" (rule {rule})" if rule else ""
    return UnreadableArtifact(
        f"{what} {path} is unreadable ({detail}): delete it and rerun snakemake to rebuild it{by}"
    )


@contextlib.contextmanager
def reading(what: str, path: str | os.PathLike, rule: str | None = None) -> Iterator[None]:
    """Turn any error of the block (a read of `path`) into `unreadable(...)`, except the file system's own
    (missing file, no permission: their message already names the path, and rebuilding would not help)."""
    try:
        yield
    except (UnreadableArtifact, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 (the library's own error, whatever its type, becomes one that names the file)
        raise unreadable(what, path, e, rule) from e


def read_parquet(path: str | os.PathLike, what: str = "Parquet file", rule: str | None = None) -> pd.DataFrame:
    """A stage's Parquet input; a corrupt one fails naming the file and the rule that rebuilds it."""
    with reading(what, path, rule):
        return pd.read_parquet(path)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """A CSV for people and spreadsheets (results/report/pareto.csv); the pipeline itself reads Parquet."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def non_finite(tensors: dict) -> list[str]:
    """Keys of the floating-point tensors among `tensors`' values that hold a NaN or an inf."""
    return [k for k, v in tensors.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    bad = non_finite(tensors)
    if bad:
        raise FloatingPointError(f"refusing to write non-finite tensors to {path}: {bad[:5]}")
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        canonical_safetensors(tmp)


def save_state(state: dict, path: str | os.PathLike) -> None:
    """A training checkpoint (tensors, numbers, strings in nested dicts): loadable with weights_only=True."""
    buffer = _io.BytesIO()
    torch.save(state, buffer)
    write_bytes(buffer.getvalue(), path)


def load_state(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W) in [0, 1] -> uint8 of the same shape, as saving the images makes them: round(255 x),
    also the conversion of Flow-GRPO's reward functions before they make PIL images."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def png_bytes(image: torch.Tensor) -> bytes:
    """(3, H, W) float in [0, 1] -> PNG bytes."""
    from PIL import Image

    array = to_uint8(image).permute(1, 2, 0).cpu().numpy()
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_tensor(data: bytes) -> torch.Tensor:
    """PNG bytes -> (3, H, W) float in [0, 1]."""
    import numpy as np
    from PIL import Image

    array = np.asarray(Image.open(_io.BytesIO(data)).convert("RGB"), dtype="float32") / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that `atomic_path` / `atomic_dir` leave when their process is killed with
    no chance to clean up (kill -9, the OOM killer, a node failure): `.NAME.*.tmp` files and `.tmp.*`
    directories. Call it only where no other process writes at the same time (a run's own directory at
    its start). Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and entry.name.startswith(".tmp."):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def canonical_safetensors(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place (data bytes untouched).

    safetensors (0.8 at least) serialises `__metadata__` from a Rust HashMap, so a file with two or more
    metadata entries (diffusers' LoRA files: `format` and `lora_adapter_metadata`) comes out in a random
    key order: the same tensors give different bytes from run to run. Sorting makes equal content mean
    equal bytes. Loaders do not care about key order. Used by `save_safetensors` and `atomic_dir`."""
    path = Path(path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to a multiple of 8 with spaces
    if text != data[8 : 8 + n]:
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])

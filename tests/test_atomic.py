"""Atomic artifacts: a writer that fails or is killed mid-write leaves the previous file intact, whole,
and (after the next run's cleanup) no temporary behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from diversegrpo import io

ROOT = Path(__file__).resolve().parents[1]


class Boom(RuntimeError):
    pass


def _temps(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp.")]


WRITERS = {
    "parquet": (lambda p, v: io.write_parquet(pd.DataFrame({"v": [v]}), p),
                lambda p: pd.read_parquet(p).v.tolist()[0], "pandas.DataFrame.to_parquet"),
    "csv": (lambda p, v: io.write_csv(pd.DataFrame({"v": [v]}), p), lambda p: pd.read_csv(p).v.tolist()[0],
            "pandas.DataFrame.to_csv"),
    "json": (lambda p, v: io.write_json({"v": v}, p), lambda p: json.loads(p.read_text())["v"], "json.dumps"),
    "text": (lambda p, v: io.write_text(f"v={v}", p), lambda p: int(p.read_text()[2:]), "pathlib.Path.write_text"),
    "safetensors": (lambda p, v: io.save_safetensors({"v": torch.tensor([float(v)])}, p),
                    lambda p: int(__import__("safetensors.torch").torch.load_file(str(p))["v"].item()),
                    "safetensors.torch.save_file"),
    "state": (lambda p, v: io.save_state({"v": v}, p), lambda p: io.load_state(p)["v"], "pathlib.Path.write_bytes"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    write, read, target = WRITERS[kind]
    path = tmp_path / "out" / f"artifact.{kind}"
    write(path, 1)
    before = path.read_bytes()
    module, _, name = target.rpartition(".")
    owner = _resolve(module)
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        # the first path-like argument written to is the temporary; write half of it, then fail
        for a in (*args, *kwargs.values()):
            if isinstance(a, (str, os.PathLike)) and ".tmp" in str(a):
                with open(a, "wb") as f:  # not Path.write_bytes: that may be the function patched
                    f.write(b"half a file")
        raise Boom("mid-write")

    monkeypatch.setattr(owner, name, failing)
    with pytest.raises(Boom):
        write(path, 2)
    monkeypatch.setattr(owner, name, original)
    assert path.read_bytes() == before and read(path) == 1
    assert not _temps(tmp_path), _temps(tmp_path)
    write(path, 3)  # and the next write goes through
    assert read(path) == 3


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_exception_inside_atomic_path_keeps_old_content(tmp_path):
    path = tmp_path / "table.csv"
    io.write_text("old\n", path)
    with pytest.raises(Boom):
        with io.atomic_path(path) as tmp:
            tmp.write_text("new, but only half")
            raise Boom
    assert path.read_text() == "old\n"
    assert not _temps(tmp_path)


def test_exception_inside_atomic_dir_keeps_old_files(tmp_path):
    directory = tmp_path / "lora"
    with io.atomic_dir(directory) as tmp:
        io.save_safetensors({"w": torch.ones(2)}, tmp / "pytorch_lora_weights.safetensors")
    before = (directory / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(Boom):
        with io.atomic_dir(directory) as tmp:
            (tmp / "pytorch_lora_weights.safetensors").write_bytes(b"new, half")
            raise Boom
    assert (directory / "pytorch_lora_weights.safetensors").read_bytes() == before
    assert not _temps(tmp_path)
    with pytest.raises(ValueError):  # a broken safetensors file is not moved into place either
        with io.atomic_dir(directory) as tmp:
            (tmp / "pytorch_lora_weights.safetensors").write_bytes(b"\x08" + bytes(7) + b"not json")
    assert (directory / "pytorch_lora_weights.safetensors").read_bytes() == before
    assert not _temps(tmp_path)


def test_non_finite_tensors_are_refused_and_the_old_file_kept(tmp_path):
    path = tmp_path / "w.safetensors"
    io.save_safetensors({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(FloatingPointError, match="refusing to write non-finite tensors"):
        io.save_safetensors({"w": torch.tensor([1.0, float("nan"), 2.0])}, path)
    assert path.read_bytes() == before and not _temps(tmp_path)


def _save_file_into_dir(path: Path) -> None:
    """What diffusers' save_lora_weights does inside atomic_dir: safetensors' save_file, which writes 0600."""
    from safetensors.torch import save_file

    with io.atomic_dir(path.parent) as tmp:
        save_file({"w": torch.ones(2)}, str(tmp / path.name), metadata={"b": "1", "a": "2"})


def _toy_lora(path: Path) -> None:
    from diversegrpo.backbones.base import LoraSpec
    from diversegrpo.backbones.toy import ToyBackbone, ToyConfig

    backbone = ToyBackbone(ToyConfig(num_layers=1))
    backbone.add_lora(LoraSpec.from_config({"rank": 2, "alpha": 2}, backbone.lora_targets))
    backbone.save_lora(path.parent)


# (id, writer of `path`): every artifact gets 0666 & ~umask, as an ordinary open() would
MODE_WRITERS = [
    *[(kind, write) for kind, (write, _, _) in sorted(WRITERS.items())],
    ("safetensors in atomic_dir", lambda p, v: _save_file_into_dir(p)),
    ("toy LoRA (diffusers save_lora_weights)", lambda p, v: _toy_lora(p)),
]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=oct)
@pytest.mark.parametrize("write", [w for _, w in MODE_WRITERS], ids=[i for i, _ in MODE_WRITERS])
def test_artifacts_follow_the_umask(tmp_path, write, umask):
    """Fails before: the LoRA (and any safetensors written by save_file inside atomic_dir) was 0600, and
    the mode was fixed at import, whatever the umask was by the time of the write."""
    path = tmp_path / "out" / "pytorch_lora_weights.safetensors"
    before = os.umask(umask)
    try:
        write(path, 1)
    finally:
        os.umask(before)
    files = [p for p in (tmp_path / "out").rglob("*")]
    assert path in files
    for f in files:
        wanted = (0o777 if f.is_dir() else 0o666) & ~umask
        assert f.stat().st_mode & 0o777 == wanted, f"{f}: {oct(f.stat().st_mode & 0o777)}, wanted {oct(wanted)}"


def test_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert io._umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was
    finally:
        os.umask(before)


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from diversegrpo.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new content, first half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
            f.write(b" and the second half")
""")


def test_sigkill_mid_write_keeps_the_previous_file(tmp_path):
    """No finally runs under SIGKILL: the old file must still be whole, the temporary is swept later."""
    path = tmp_path / "log.parquet"
    io.write_parquet(pd.DataFrame({"v": [1, 2]}), path)
    before = path.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert process.stdout.readline() == b"writing\n"
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert path.read_bytes() == before and pd.read_parquet(path).v.tolist() == [1, 2]
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].read_bytes() == b"new content, first half"
    assert io.remove_stale_temps(tmp_path) == left and not _temps(tmp_path)
    assert path.read_bytes() == before  # the sweep touches temporaries only


def test_remove_stale_temps_spares_real_files(tmp_path):
    keep = [tmp_path / "a.tmp", tmp_path / ".hidden", tmp_path / "x.parquet", tmp_path / "tmp.dir"]
    for p in keep[:3]:
        p.write_text("keep")
    keep[3].mkdir()
    (tmp_path / ".x.parquet.abc.tmp").write_text("stale")
    (tmp_path / ".tmp.abc").mkdir()
    (tmp_path / ".tmp.abc" / "f").write_text("stale")
    assert sorted(p.name for p in io.remove_stale_temps(tmp_path)) == [".tmp.abc", ".x.parquet.abc.tmp"]
    assert all(p.exists() for p in keep)
    assert io.remove_stale_temps(tmp_path / "missing") == []

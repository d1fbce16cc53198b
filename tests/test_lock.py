"""One writer per run folder: a second trainer on a folder that a live trainer holds fails at once, naming
the folder and the holder's pid; a holder that died (kill -9) or finished never leaves the folder stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diversegrpo.stages.train import LOCK, RunFolderLocked, run_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "1"}
HOLDER = "import sys; from diversegrpo.stages.train import run_lock\n" \
         "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.readline()\n"


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=ENV, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _end(proc: subprocess.Popen, how: str) -> None:
    if how == "kill -9":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "finished":
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait(timeout=60)


# (id, what becomes of the first trainer before the second starts, the second is refused)
CASES = [
    ("held by a live trainer", "alive", True),
    ("holder killed with kill -9", "kill -9", False),
    ("holder finished", "finished", False),
]


@pytest.mark.parametrize("how, refused", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_second_trainer_on_the_folder(tmp_path, how, refused):
    """Fails before: nothing stopped a second trainer from writing the same run folder."""
    out = tmp_path / "runs" / "toy" / "colour" / "flow_grpo"
    first = _holder(out)
    try:
        if how != "alive":
            _end(first, how)
        start = time.monotonic()
        missing = tmp_path / "missing.json"
        command = [sys.executable, "-m", "diversegrpo.stages.train", "--run-config", str(missing), "--out", str(out)]
        second = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
        elapsed = time.monotonic() - start
    finally:
        if first.poll() is None:
            _end(first, "finished")
    assert second.returncode != 0
    if refused:
        wanted = f"run folder '{out}' is being written by another trainer (pid {first.pid} holds '{out / LOCK}')"
        assert wanted in second.stderr, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        assert elapsed < 60, f"the second trainer waited {elapsed:.0f} s"  # at once: it never waits for the lock
    else:  # past the lock, on to the (here missing) run config
        assert "being written by another trainer" not in second.stderr, second.stderr[-3000:]
        assert "missing.json" in second.stderr, second.stderr[-3000:]
    if how == "finished":
        assert not (out / LOCK).exists()


def test_lock_in_one_process(tmp_path):
    out = tmp_path / "run"
    with run_lock(out) as path:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunFolderLocked, match=f"pid {os.getpid()} holds"):
            with run_lock(out):
                pass
    assert not path.exists()
    with run_lock(out):  # released: taken again
        pass

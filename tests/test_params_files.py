"""workflow/rules/params.smk on its own: a job's settings in a params file whose mtime moves only when they
change, back to the outputs' own when a change is undone before the job ran (a dry run with other
settings), and a history that decides which settings the outputs were made with."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

SMK = Path(__file__).resolve().parents[1] / "workflow/rules/params.smk"


@pytest.fixture(scope="module")
def params():
    namespace: dict = {}
    exec(compile(SMK.read_text(), str(SMK), "exec"), namespace)  # plain Python, no Snakemake directive
    return namespace


@pytest.fixture
def job(tmp_path):
    """A params file path and a job's two outputs, made an hour ago."""
    outputs = [tmp_path / "out/a.parquet", tmp_path / "out/b.parquet"]
    for o in outputs:
        o.parent.mkdir(parents=True, exist_ok=True)
        o.write_bytes(b"x")
    made(outputs, time.time_ns() - 3600 * 10**9)
    return str(tmp_path / "params/run_config/toy/colour/m.json"), [str(o) for o in outputs]


def made(outputs, ns):
    for o in outputs:
        os.utime(o, ns=(ns, ns))


def job_ran(outputs):
    """The job writes its outputs now (after the params file), and time goes on."""
    time.sleep(0.01)
    made(outputs, time.time_ns())
    time.sleep(0.01)


def mtime(path):
    return os.stat(path).st_mtime_ns


def test_first_sight_trusts_the_outputs_and_is_no_input(params, job):
    path, outputs = job
    assert params["sync_params_file"](path, {"beta": 1.0}, outputs) is False
    assert mtime(path) == params["TRUSTED_MTIME_NS"] < min(map(mtime, outputs))
    assert Path(path).read_bytes() == params["params_bytes"]({"beta": 1.0})


def test_unchanged_settings_write_nothing(params, job):
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"a": 1, "b": {"c": 2}}, outputs)
    before = os.stat(path)
    history = Path(path + ".history").read_text()
    assert sync(path, {"b": {"c": 2}, "a": 1}, outputs) is False  # key order is no change
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert Path(path + ".history").read_text() == history


def test_a_change_is_newer_than_the_outputs_and_an_input(params, job):
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    assert sync(path, {"beta": 2.0}, outputs) is True
    assert mtime(path) > max(map(mtime, outputs))
    assert b"2.0" in Path(path).read_bytes()
    assert not list(Path(path).parent.glob("*.tmp")), "the atomic write left its temporary file"


def test_undoing_a_change_before_the_job_ran_restores_the_old_mtime(params, job):
    """A dry run with other settings, then the old ones again: nothing may rerun."""
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    sync(path, {"beta": 2.0}, outputs)
    sync(path, {"beta": 3.0}, outputs)
    assert sync(path, {"beta": 1.0}, outputs) is False
    assert mtime(path) == params["TRUSTED_MTIME_NS"]
    assert b"1.0" in Path(path).read_bytes()


def test_undoing_restores_a_tracked_mtime_too(params, job):
    """Settings the outputs were remade with (a tracked file), a dry run with others, then back."""
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    sync(path, {"beta": 2.0}, outputs)
    written = mtime(path)
    job_ran(outputs)  # with beta 2
    assert sync(path, {"beta": 5.0}, outputs) is True
    assert sync(path, {"beta": 2.0}, outputs) is True  # still an input: the job's recorded input set had it
    assert mtime(path) == written < min(map(mtime, outputs))


def test_going_back_after_the_job_ran_with_the_change_reruns_it(params, job):
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    sync(path, {"beta": 2.0}, outputs)
    job_ran(outputs)  # with beta 2
    assert sync(path, {"beta": 1.0}, outputs) is True
    assert mtime(path) > max(map(mtime, outputs))


def test_missing_outputs_or_a_cut_history_rerun(params, job):
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    sync(path, {"beta": 2.0}, outputs)
    os.remove(outputs[1])
    assert sync(path, {"beta": 1.0}, outputs) is True  # the job reruns anyway: no mtime to restore
    Path(outputs[1]).write_bytes(b"x")
    made(outputs, time.time_ns() - 3600 * 10**9)
    Path(path).write_text('{"beta": 9.0}\n')  # a file the history does not end with
    assert sync(path, {"beta": 1.0}, outputs) is True


def test_a_deleted_params_file_with_its_history_left_reruns(params, job):
    path, outputs = job
    sync = params["sync_params_file"]
    sync(path, {"beta": 1.0}, outputs)
    os.remove(path)
    assert sync(path, {"beta": 1.0}, outputs) is True
    assert mtime(path) > params["TRUSTED_MTIME_NS"]

"""The slurm profile on a real single-node SLURM cluster (ci/slurm/start.sh) running on localhost.

Runs the tiny config through `--executor slurm --workflow-profile workflow/profiles/slurm` in a copy of
the repository, then checks with `sacct` that every job of a non-local rule ran as its own SLURM job,
and that `--forcerun` on one training run resubmits exactly that run's train/sample/evaluate jobs (and
reruns the report locally), nothing else. A second test gives the first train job a 1-minute time limit
on a run that needs longer: SLURM kills it (TIMEOUT), the profile's retries resubmit it, it resumes from
its checkpoint, and the pipeline finishes with a log bit-identical to an uninterrupted run's.

Needs root and the Debian packages of ci/slurm/install.sh. Without them the test skips locally; in CI
(CI=true) it fails instead, so a broken install can never pass as green.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
NEEDED = ["munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"]
HEAVY = {"backbone", "train", "sample", "evaluate", "budget"}  # must run as SLURM jobs
CHEAP = {"captions", "report", "analyses"}  # must be localrules (run_config too, where it exists)
# tiny config, run matrix cut to 1 reward x 2 methods: 9 SLURM jobs on a 2-CPU node instead of 21
MATRIX = {"runs": {"backbones": ["toy"], "rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"]}}
JOB_HEADER = re.compile(r"^(local)?rule (\w+):\s*$")


def _as_root(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() == 0 else ["sudo", "-n", "--preserve-env=PATH", *cmd]


def _passwordless_sudo() -> bool:
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def _unavailable() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    reasons = []
    missing = [exe for exe in NEEDED if shutil.which(exe, path=path) is None]
    if missing:
        reasons.append(f"missing {', '.join(missing)} (run ci/slurm/install.sh as root)")
    if os.geteuid() != 0 and not _passwordless_sudo():
        reasons.append("neither root nor passwordless sudo (the test cluster runs its daemons as root)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        reasons.append("snakemake-executor-plugin-slurm is not installed in this environment")
    etc = Path("/etc/slurm/slurm.conf")
    if etc.exists() and not etc.is_symlink():
        reasons.append(f"{etc} exists: a real SLURM installation, which the test cluster will not shadow")
    return reasons


def _jobs_in_log(text: str) -> list[tuple[str, str, bool]]:
    """(rule, wildcards joined like the slurm plugin's job comment, local?) for each job Snakemake ran."""
    jobs, current = [], None
    for line in text.splitlines():
        m = JOB_HEADER.match(line)
        if m:
            current = [m.group(2), "", bool(m.group(1))]
            jobs.append(current)
        elif current is not None and line.strip().startswith("wildcards:"):
            pairs = line.split("wildcards:", 1)[1].split(",")
            current[1] = "_".join(p.split("=", 1)[1].strip() for p in pairs).replace("/", "_")
        elif not line.strip():
            current = None
    return [tuple(j) for j in jobs]


def _wildcards_of(parts) -> str:
    """The wildcards joined as in _comment, from a path's parts: seed<seed> folders and files are the seed's."""
    return "_".join(p.removeprefix("seed") if p.startswith("seed") else p for p in parts)


def _comment(rule: str, wildcards: str) -> str:
    return f"rule_{rule}" + (f"_wildcards_{wildcards}" if wildcards else "")


def _sacct(env: dict) -> list[dict]:
    fields = "JobID,JobName%80,Comment%200,State,ExitCode,ElapsedRaw,TimelimitRaw"
    out = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "-S", "2000-01-01", "-o", fields],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    keys = ["id", "name", "comment", "state", "exit", "seconds", "limit"]
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster():
    reasons = _unavailable()
    if reasons:
        msg = "no local SLURM test cluster: " + "; ".join(reasons)
        if IN_CI:
            pytest.fail(msg + " -- CI=true, so this is a failure (ci/slurm/install.sh must run in .ci/run)")
        pytest.skip(msg)
    # short path: munge's and MariaDB's unix sockets live in it (108-byte limit)
    state = Path(tempfile.mkdtemp(prefix="ci-slurm-", dir="/tmp"))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin", HF_HUB_OFFLINE="1")
    try:
        started = subprocess.run(
            _as_root([str(REPO / "ci/slurm/start.sh"), str(state)]),
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert started.returncode == 0, f"ci/slurm/start.sh failed:\n{started.stdout}\n{started.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        assert _sacct(env) == [], "a fresh cluster must have no jobs in its accounting"
        yield env
    finally:
        subprocess.run(_as_root([str(REPO / "ci/slurm/stop.sh"), str(state), "--purge"]), env=env, timeout=300)


def _snakemake(workdir: Path, env: dict, *extra: str, configfiles=("config/tiny.yaml", "matrix.yaml"),
               profile: str = "workflow/profiles/slurm", timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"), "--configfile", *configfiles,
        "--executor", "slurm", "--workflow-profile", profile,
        "--slurm-init-seconds-before-status-checks", "1",  # the profile's 20 s, per job, is for real clusters
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        slurm_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in slurm_logs[-3:])
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-8000:]}\n{tails}")
    return proc


def test_every_stage_runs_as_a_slurm_job_and_forcerun_resubmits_one_run(cluster, tmp_path):
    env = cluster
    before = {j["id"] for j in _sacct(env)}  # jobs of other tests on the module's cluster
    work = tmp_path / "repo"
    work.mkdir()
    copy_repo(work)
    (work / "matrix.yaml").write_text(yaml.safe_dump(MATRIX))

    # --- the whole tiny pipeline on the cluster ------------------------------------------------------
    first = _snakemake(work, env)
    assert (work / "results/report/summary.json").is_file()
    ran = _jobs_in_log(first.stderr)
    rules_ran = {rule for rule, _, _ in ran}
    assert HEAVY <= rules_ran, f"the DAG lacks stages: {HEAVY - rules_ran} (ran: {sorted(rules_ran)})"
    local = {rule for rule, _, is_local in ran if is_local}
    expected_local = CHEAP | ({"run_config"} & rules_ran) | {"all"}
    assert local == expected_local, (
        f"local rules {sorted(local)} != {sorted(expected_local)}: "
        "captions/report/run_config must be `localrules`, every other stage a SLURM job"
    )
    remote = collections.Counter(_comment(r, w) for r, w, is_local in ran if not is_local)

    acct = [j for j in _sacct(env) if j["id"] not in before]
    runs = {j["name"] for j in acct}
    assert len(runs) == 1, f"one snakemake run, one SLURM job name (its run id), got {runs}"
    bad = [j for j in acct if j["state"] != "COMPLETED" or j["exit"] != "0:0"]
    assert not bad, f"SLURM jobs that did not complete: {bad}"
    submitted = collections.Counter(j["comment"] for j in acct)
    assert submitted == remote, (
        "every non-local job must be exactly one SLURM job: "
        f"missing {remote - submitted}, unexpected {submitted - remote}"
    )
    for rule in HEAVY:
        assert any(c.startswith(f"rule_{rule}") for c in submitted), f"no SLURM job for rule {rule}"

    # --- force one training run: exactly it and its downstream jobs are redone --------------------------
    trains = sorted(w for r, w, _ in ran if r == "train")
    target_wc = next((w for w in trains if w.endswith("diverse_grpo_0")), trains[0])  # backbone_reward_method_seed
    runs_dir = work / "results/runs"
    train_log = [p for p in runs_dir.rglob("log.parquet")
                 if _wildcards_of(p.parent.relative_to(runs_dir).parts) == target_wc]
    assert len(train_log) == 1, f"train output of {target_wc} not found"
    target = train_log[0].relative_to(work)
    others = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*")
              if p.is_file() and target_wc not in _wildcards_of(p.relative_to(work / "results").parts)
              and p.relative_to(work / "results").parts[0] not in ("report", "analyses")}
    others |= {p: p.stat().st_mtime_ns for p in (work / "results/analyses/budget").rglob("*")
               if p.is_file() and target_wc not in _wildcards_of(p.relative_to(work / "results/analyses").parts)}

    second = _snakemake(work, env, "--forcerun", str(target))
    reran = collections.Counter((r, w) for r, w, _ in _jobs_in_log(second.stderr))
    expected = collections.Counter(
        {("train", target_wc): 1, ("sample", target_wc): 1, ("evaluate", target_wc): 1, ("budget", target_wc): 1,
         ("report", ""): 1, ("analyses", ""): 1, ("all", ""): 1}
    )
    assert reran == expected, f"--forcerun {target}: ran {dict(reran)}, expected {dict(expected)}"

    acct2 = [j for j in _sacct(env) if j["name"] not in runs and j["id"] not in before]
    assert all(j["state"] == "COMPLETED" for j in acct2), acct2
    resubmitted = collections.Counter(j["comment"] for j in acct2)
    assert resubmitted == collections.Counter(
        _comment(rule, target_wc) for rule in ("train", "sample", "evaluate", "budget")
    ), f"resubmitted SLURM jobs: {dict(resubmitted)}"
    changed = [str(p) for p, t in others.items() if p.stat().st_mtime_ns != t]
    assert not changed, f"outputs of other runs were rewritten: {changed[:10]}"


# --- time limits ---------------------------------------------------------------------------------------
# One run whose training needs longer than the train job's time limit (1 minute, SLURM's smallest).
TIME_LIMIT_MATRIX = {"runs": {"backbones": ["toy"], "rewards": ["colour"], "methods": ["diverse_grpo"]}}
RUN = ("toy", "colour", "diverse_grpo")
SEED = 0  # config/config.yaml's runs.seeds, which TIME_LIMIT_MATRIX keeps
TRAIN_COMMENT = _comment("train", "_".join([*RUN, str(SEED)]))
# slurmctld enforces time limits every 30 s (PERIODIC_TIMEOUT), so a 1-minute job is killed 60-90 s after
# it starts. The run is sized to TRAIN_SECONDS of timed training work on this machine (measured first;
# the job's wall time is ~1.2x that plus ~8 s of start-up), so that the first job cannot finish in 90 s
# even if it runs 30% faster than the measurement (it ran 1.2-2.5x slower: the jobs beside it). Later
# submissions get 10 minutes (the runtime is an expression of Snakemake's `attempt`): the second one
# always finishes, however busy the machine.
TRAIN_SECONDS = 100
CALIBRATION_ITERATIONS = 30
LORA = "lora/pytorch_lora_weights.safetensors"
RESUMED = re.compile(r"resumed from \S*checkpoints/state\.pt at iteration (\d+)")
SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", re.M)


def _long_train(iterations: int) -> dict:
    """config/tiny.yaml's run, heavier per iteration (4 prompts x 8 images) and `iterations` long, with
    ~20 checkpoints and a few held-out evaluations (the curve must survive the resume too)."""
    return {"train": {"prompts_per_iteration": 4, "group_size": 8, "iterations": iterations,
                      "checkpoint_every": max(1, iterations // 20), "eval_every": max(1, iterations // 4)}}


def _local_snakemake(workdir: Path, env: dict, *args: str) -> None:
    cmd = [str(BIN / "snakemake"), "--workflow-profile", "workflow/profiles/default", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-6000:]}"


def _train(workdir: Path, env: dict, run_config: Path, out: Path, nice: int = 0) -> subprocess.Popen:
    cmd = [str(BIN / "python"), "-m", "diversegrpo.stages.train", "--run-config", str(run_config), "--out", str(out)]
    return subprocess.Popen(["nice", "-n", str(nice), *cmd], cwd=workdir, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_train_job_past_its_time_limit_is_resubmitted_and_resumes(cluster, tmp_path):
    env, started = cluster, time.monotonic()
    before = {j["id"] for j in _sacct(env)}  # jobs of other tests on the module's cluster
    work = tmp_path / "repo"
    work.mkdir()
    copy_repo(work)
    (work / "matrix.yaml").write_text(yaml.safe_dump(TIME_LIMIT_MATRIX))
    overlay = work / "long_train.yaml"
    configs = ["config/tiny.yaml", "matrix.yaml", overlay.name]
    run_config = work / "results/runs" / Path(*RUN) / f"seed{SEED}" / "config.json"

    # --- locally: captions, the toy backbone and the run's config; then the run's speed here ------------
    overlay.write_text(yaml.safe_dump(_long_train(CALIBRATION_ITERATIONS)))
    _local_snakemake(work, env, "--configfile", *configs, "--until", "backbone", "run_config")
    calibration = _train(work, env, run_config, tmp_path / "calibration")
    _, err = calibration.communicate(timeout=300)
    assert calibration.returncode == 0, f"calibration run failed:\n{err[-4000:]}"
    timings = pd.read_parquet(tmp_path / "calibration/timings.parquet")
    per_iteration = float(timings.filter(like="seconds_").sum(axis=1).mean())
    iterations = max(100, round(TRAIN_SECONDS / per_iteration))
    overlay.write_text(yaml.safe_dump(_long_train(iterations)))
    _local_snakemake(work, env, "--configfile", *configs, "--until", "run_config")  # the run's final config

    # --- the uninterrupted reference, beside the cluster run but niced: the train jobs' speed is what the
    # calibration measured, and the reference takes the CPU they leave ------------------------------------
    reference_out = tmp_path / "reference"
    reference = _train(work, env, run_config, reference_out, nice=19)

    # --- the pipeline on the cluster: the slurm profile as shipped, but a 1-minute first train job -------
    profile = yaml.safe_load((work / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["set-resources"]["train"]["runtime"] > 1
    profile["set-resources"]["train"]["runtime"] = "1 if attempt == 1 else 10"
    (work / "profile-1min").mkdir()
    (work / "profile-1min/config.yaml").write_text(yaml.safe_dump(profile))
    proc = _snakemake(work, env, configfiles=configs, profile="profile-1min", timeout=900)
    cluster_seconds = time.monotonic() - started
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, f"the uninterrupted reference run failed:\n{err[-4000:]}"
    assert (work / "results/report/summary.json").is_file(), "the pipeline did not finish: no report"

    # --- sacct: the train job timed out, was resubmitted, and its last submission completed -------------
    acct = sorted((j for j in _sacct(env) if j["id"] not in before), key=lambda j: int(j["id"]))
    trains = [j for j in acct if j["comment"] == TRAIN_COMMENT]
    summary = [(j["id"], j["state"], int(j["seconds"]), int(j["limit"])) for j in trains]
    assert [(j["state"], j["limit"]) for j in trains] == [("TIMEOUT", "1"), ("COMPLETED", "10")], (
        f"the train job must time out at its 1-minute limit, be resubmitted, then complete; its SLURM jobs "
        f"(id, state, seconds, limit in minutes): {summary}"
    )
    others = [j for j in acct if j["comment"] != TRAIN_COMMENT]
    assert others and all(j["state"] == "COMPLETED" for j in others), f"other jobs: {others}"
    # Snakemake's side: every submission of the train job is one of these SLURM jobs, each failure was
    # followed by a restart, and only the last submission counted as finished.
    submissions = [(job, slurm) for job, slurm, rule in SUBMITTED.findall(proc.stderr) if rule == "train"]
    assert [slurm for _, slurm in submissions] == [j["id"] for j in trains], (submissions, summary)
    job = submissions[0][0]
    restarts = proc.stderr.count(f"Trying to restart job {job}.")
    assert restarts == len(trains) - 1, f"{restarts} restarts of job {job} in the Snakemake log for {summary}"
    finished = proc.stderr.count(f"Finished jobid: {job} (Rule: train)")
    assert finished == 1, f"the train job was reported finished {finished} times (timed-out submissions must not be)"

    # --- the last submission resumed from a checkpoint, and ended where the uninterrupted run did ---------
    train_log = (work / "logs/train" / Path(*RUN) / f"seed{SEED}.log").read_text()
    resumed = [int(k) for k in RESUMED.findall(train_log)]
    assert len(resumed) == 1 and 0 < resumed[0] < iterations, f"the last train job did not resume:\n{train_log[-3000:]}"
    out = run_config.parent
    for name in ("log.parquet", "curve.parquet", LORA):
        assert (out / name).read_bytes() == (reference_out / name).read_bytes(), (
            f"{name} of the resubmitted run differs from the uninterrupted run's"
        )
    print(
        f"\ntime limit: {iterations} iterations ({per_iteration:.3f} s each), train jobs {summary}, last resumed "
        f"at iteration {resumed[0]}; cluster run done at {cluster_seconds:.0f} s, "
        f"test {time.monotonic() - started:.0f} s"
    )

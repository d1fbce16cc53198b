"""The slurm profile on a real single-node SLURM cluster (ci/slurm/start.sh) running on localhost.

Runs the tiny config through `--executor slurm --workflow-profile workflow/profiles/slurm` in a copy of
the repository, then checks with `sacct` that every job of a non-local rule ran as its own SLURM job,
and that `--forcerun` on one training run resubmits exactly that run's train/sample/evaluate jobs (and
reruns the report locally), nothing else.

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
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
NEEDED = ["munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"]
HEAVY = {"backbone", "train", "sample", "evaluate"}  # must run as SLURM jobs
CHEAP = {"captions", "report"}  # must be localrules (run_config too, where it exists)
# tiny config, run matrix cut to 1 reward x 2 methods: 9 SLURM jobs on a 2-CPU node instead of 21
MATRIX = {"runs": {"backbones": ["toy"], "rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"]}}
JOB_HEADER = re.compile(r"^(local)?rule (\w+):\s*$")


def _as_root(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() == 0 else ["sudo", "-n", "--preserve-env=PATH", *cmd]


def _unavailable() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    reasons = []
    missing = [exe for exe in NEEDED if shutil.which(exe, path=path) is None]
    if missing:
        reasons.append(f"missing {', '.join(missing)} (run ci/slurm/install.sh as root)")
    if os.geteuid() != 0 and (shutil.which("sudo") is None or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0):
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


def _comment(rule: str, wildcards: str) -> str:
    return f"rule_{rule}" + (f"_wildcards_{wildcards}" if wildcards else "")


def _sacct(env: dict) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "-S", "2000-01-01", "-o", "JobID,JobName%80,Comment%200,State,ExitCode"],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    keys = ["id", "name", "comment", "state", "exit"]
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
            _as_root([str(REPO / "ci/slurm/start.sh"), str(state)]), env=env, capture_output=True, text=True, timeout=300
        )
        assert started.returncode == 0, f"ci/slurm/start.sh failed:\n{started.stdout}\n{started.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        assert _sacct(env) == [], "a fresh cluster must have no jobs in its accounting"
        yield env
    finally:
        subprocess.run(_as_root([str(REPO / "ci/slurm/stop.sh"), str(state), "--purge"]), env=env, timeout=300)


def _snakemake(workdir: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"), "--configfile", "config/tiny.yaml", "matrix.yaml",
        "--executor", "slurm", "--workflow-profile", "workflow/profiles/slurm",
        "--slurm-init-seconds-before-status-checks", "1",  # the profile's 20 s, per job, is for real clusters
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        slurm_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in slurm_logs[-3:])
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-8000:]}\n{tails}")
    return proc


def test_every_stage_runs_as_a_slurm_job_and_forcerun_resubmits_one_run(cluster, tmp_path):
    env = cluster
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

    acct = _sacct(env)
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
    target_wc = next((w for w in trains if w.endswith("diverse_grpo")), trains[0])
    train_log = [p for p in (work / "results/runs").rglob("log.parquet") if "_".join(p.parent.relative_to(work / "results/runs").parts) == target_wc]
    assert len(train_log) == 1, f"train output of {target_wc} not found"
    target = train_log[0].relative_to(work)
    others = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*")
              if p.is_file() and target_wc not in "_".join(p.relative_to(work / "results").parts)
              and not p.relative_to(work / "results").parts[0] == "report"}

    second = _snakemake(work, env, "--forcerun", str(target))
    reran = collections.Counter((r, w) for r, w, _ in _jobs_in_log(second.stderr))
    expected = collections.Counter(
        {("train", target_wc): 1, ("sample", target_wc): 1, ("evaluate", target_wc): 1, ("report", ""): 1, ("all", ""): 1}
    )
    assert reran == expected, f"--forcerun {target}: ran {dict(reran)}, expected {dict(expected)}"

    acct2 = [j for j in _sacct(env) if j["name"] not in runs]
    assert all(j["state"] == "COMPLETED" for j in acct2), acct2
    resubmitted = collections.Counter(j["comment"] for j in acct2)
    assert resubmitted == collections.Counter(
        _comment(rule, target_wc) for rule in ("train", "sample", "evaluate")
    ), f"resubmitted SLURM jobs: {dict(resubmitted)}"
    changed = [str(p) for p, t in others.items() if p.stat().st_mtime_ns != t]
    assert not changed, f"outputs of other runs were rewritten: {changed[:10]}"

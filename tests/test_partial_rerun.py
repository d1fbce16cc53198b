"""Partial reruns with Snakemake: after a full run of the tiny config, a changed hyper-parameter reruns
exactly the jobs it belongs to (with the profile's rerun triggers: mtime, params, input, software-env).

The run matrix is cut to 1 reward x {flow_grpo, diverse_grpo} (+ the untrained base) to keep the full
run short on 2 CPU cores; the checks are written against MATRIX, so widening it keeps them valid.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import copy_repo, jobs_in_log

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MATRIX = {"runs": {"backbones": ["toy"], "rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"]}}
REPORT = {("report", ""): 1, ("all", ""): 1}
ANALYSES = {("analyses", ""): 1}  # gathers every run's log and budget
SEEDS = [0]  # runs.seeds of config/config.yaml, which MATRIX keeps


def snakemake(work: Path, *args: str, overlays=()) -> str:
    cmd = [str(BIN / "snakemake"), "--workflow-profile", "workflow/profiles/default", "--cores", "2",
           "--configfile", "config/tiny.yaml", "matrix.yaml", *overlays, *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    return proc.stdout + proc.stderr


def mtimes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("partial") / "repo"
    work.mkdir()
    copy_repo(work)
    (work / "matrix.yaml").write_text(yaml.safe_dump(MATRIX))
    log = snakemake(work)
    assert (work / "results/report/summary.json").is_file()
    return work, jobs_in_log(log)


def runs_of(method: str) -> list[str]:
    """The runs' folders under results/<kind>/ (each holds a seed<seed>/ per seed)."""
    return [f"toy/{r}/{method}" for r in MATRIX["runs"]["rewards"]]


def jobs_of(method: str) -> list[str]:
    """The runs' jobs as jobs_in_log names them: backbone/reward/method/seed (the tiny config's seeds)."""
    return [f"{run}/{seed}" for run in runs_of(method) for seed in SEEDS]


def test_changing_diverse_grpo_beta_reruns_only_its_runs_and_the_report(full_run):
    work, first = full_run
    for method in MATRIX["runs"]["methods"]:
        assert all(first[("train", job)] == 1 for job in jobs_of(method)), f"{method} was not trained: {first}"
    assert snakemake(work, "-n").count("Nothing to be done") == 1, "a finished run must be up to date"

    (work / "beta.yaml").write_text(yaml.safe_dump({"methods": {"diverse_grpo": {"creative": {"beta": 2.5}}}}))
    planned = jobs_in_log(snakemake(work, "-n", overlays=["beta.yaml"]))
    per_run = {"train", "sample", "evaluate", "budget"}
    per_run |= {"run_config"} if any(r == "run_config" for r, _ in first) else set()
    expected = collections.Counter({(rule, job): 1 for job in jobs_of("diverse_grpo") for rule in per_run})
    expected.update({**REPORT, **ANALYSES})
    assert planned == expected, f"dry run planned {dict(planned)}, expected {dict(expected)}"

    # ... and running it redoes exactly that: every other artifact keeps its bytes and mtime
    before = mtimes(work)
    snakemake(work, overlays=["beta.yaml"])
    after = mtimes(work)
    changed = {p for p in before if after.get(p) != before[p]}
    affected = [f"results/{kind}/{run}" for run in runs_of("diverse_grpo")
                for kind in ("runs", "samples", "metrics", "analyses/budget")] + ["results/report/"]
    affected += [f"results/analyses/{name}" for name in ("budget", "efficiency", "replicator")]
    unexpected = sorted(p for p in changed if not p.startswith(tuple(affected)))
    assert not unexpected, f"artifacts of unaffected jobs were rewritten: {unexpected[:10]}"
    for run in runs_of("diverse_grpo"):
        assert any(p.startswith(f"results/runs/{run}/") for p in changed), f"{run} was not retrained"
    assert "results/report/summary.json" in changed
    assert snakemake(work, "-n", overlays=["beta.yaml"]).count("Nothing to be done") == 1


def test_report_setting_reruns_only_the_report(full_run):
    work, _ = full_run
    overlay = work / "report.yaml"
    overlay.write_text(yaml.safe_dump({"report": {"grid_images": 2}}))
    # whatever the previous test left as the current beta, add it so that only the report differs
    extra = ["beta.yaml"] if (work / "beta.yaml").exists() else []
    planned = jobs_in_log(snakemake(work, "-n", overlays=[*extra, "report.yaml"]))
    assert planned == collections.Counter(REPORT), dict(planned)


def test_a_method_outside_the_run_matrix_reruns_nothing(full_run):
    work, _ = full_run
    (work / "unused.yaml").write_text(yaml.safe_dump({"methods": {"sa_reg": {"reg_weight": 7.0}}}))
    extra = ["beta.yaml"] if (work / "beta.yaml").exists() else []
    out = snakemake(work, "-n", overlays=[*extra, "unused.yaml"])
    assert jobs_in_log(out) == collections.Counter(), "sa_reg is not in the run matrix: nothing may rerun"


def test_a_rollout_setting_retrains_without_pre_training_the_backbone_again(full_run):
    """noise_level / sde_type live in the backbone's block but only GRPO reads them: the pre-trained
    model (minutes of the default DAG) must survive a change of them."""
    work, _ = full_run
    (work / "noise.yaml").write_text(yaml.safe_dump({"backbones": {"toy": {"noise_level": 0.3, "sde_type": "sde"}}}))
    extra = ["beta.yaml"] if (work / "beta.yaml").exists() else []
    planned = jobs_in_log(snakemake(work, "-n", overlays=[*extra, "noise.yaml"]))
    assert not any(rule == "backbone" for rule, _ in planned), dict(planned)
    for method in MATRIX["runs"]["methods"]:
        assert all(planned[("train", job)] == 1 for job in jobs_of(method)), dict(planned)


def test_without_snakemake_metadata_the_params_files_decide(full_run):
    """.snakemake/ lost (where Snakemake records params): the settings the tree was made with plan nothing,
    and the other beta (2.5 after the first test, the default otherwise) reruns exactly diverse_grpo's jobs."""
    work, _ = full_run
    made_with = ["beta.yaml"] if (work / "beta.yaml").exists() else []
    (work / "other.yaml").write_text(yaml.safe_dump({"methods": {"diverse_grpo": {"creative": {"beta": 2.5}}}}))
    other = [] if made_with else ["other.yaml"]
    shutil.rmtree(work / ".snakemake")
    assert jobs_in_log(snakemake(work, "-n", overlays=made_with)) == collections.Counter()
    planned = jobs_in_log(snakemake(work, "-n", overlays=other))
    expected = collections.Counter({(rule, job): 1 for job in jobs_of("diverse_grpo")
                                    for rule in ("run_config", "train", "sample", "evaluate", "budget")})
    expected.update({**REPORT, **ANALYSES})
    assert planned == expected, dict(planned)
    # that dry run changed nothing: the tree is still up to date for the settings it was made with
    assert jobs_in_log(snakemake(work, "-n", overlays=made_with)) == collections.Counter()

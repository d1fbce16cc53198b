"""What `snakemake -n` plans on a complete tree of the tiny config, without running a job: the tree is made
of empty files (`snakemake --touch` orders their mtimes) and .snakemake/ is then deleted, so that only the
workflow's own mechanisms count (rule all's targets, the params files of workflow/rules/params.smk), not
Snakemake's records.

- A deleted artifact (a figure, a LoRA, a backbone file) is planned again, with exactly what depends on it.
- A changed setting reruns exactly the jobs it belongs to, and the same settings again rerun nothing.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_helpers import copy_repo, jobs_in_log

BIN = Path(sys.executable).parent
RUNS = [f"toy/{r}/{m}" for r in ("colour", "contrast") for m in ("flow_grpo", "sa_reg", "diverse_grpo")]
SEED = 0  # the tiny config's one seed (runs.seeds): a directory level of every run's artifacts, a wildcard of its jobs
JOBS = [f"{run}/{SEED}" for run in RUNS]  # a run's jobs, as jobs_in_log names them (the wildcards' values)
BASE = f"toy/{SEED}"  # the base model's sample_base / evaluate_base jobs
REPORT = {("report", ""): 1, ("all", ""): 1}
ANALYSES = {("analyses", ""): 1}  # a run's new log or curve, or a new budget
# The README's "Stages and artifacts" table, for the tiny config's matrix (toy x 2 rewards x 3 methods)
ARTIFACTS = {
    "results/captions/train.parquet", "results/captions/eval.parquet",
    *(f"results/backbones/toy/{f}" for f in ("model.safetensors", "config.json", "coverage.parquet",
                                             "pretrain_log.parquet")),
    *(f"results/runs/{run}/seed{SEED}/{f}" for run in RUNS
      for f in ("config.json", "lora/pytorch_lora_weights.safetensors", "log.parquet", "timings.parquet",
                "curve.parquet")),
    *(f"results/samples/{run}/seed{SEED}/images.parquet" for run in [*RUNS, "toy/base"]),
    *(f"results/metrics/{run}/seed{SEED}/metrics.parquet" for run in [*RUNS, "toy/base"]),
    *(f"results/report/{f}" for f in ("table.md", "table.tex", "summary.json", "pareto.png",
                                      "pareto.csv", "curves.png", "grids/toy_colour.png", "grids/toy_contrast.png")),
    *(f"results/analyses/budget/{run}/seed{SEED}.parquet" for run in [*RUNS, "toy/base"]),
    *(f"results/analyses/{f}.{ext}" for f in ("budget", "efficiency", "replicator") for ext in ("parquet", "png")),
}


def snakemake(work: Path, *args: str, overlays=()) -> str:
    cmd = [str(BIN / "snakemake"), *args, "--workflow-profile", "workflow/profiles/default", "--cores", "1",
           "--configfile", "config/tiny.yaml", *overlays]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def planned(work: Path, *overlays: str) -> collections.Counter:
    return jobs_in_log(snakemake(work, "-n", overlays=overlays))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A complete, up-to-date tree of the tiny config made of empty files, without .snakemake/."""
    work = copy_repo(tmp_path_factory.mktemp("triggers") / "repo")
    summary = snakemake(work, "--summary").splitlines()
    files = [line.split("\t")[0] for line in summary if line.startswith("results/")]
    assert set(files) == ARTIFACTS, f"the DAG's outputs differ from the README's: {set(files) ^ ARTIFACTS}"
    past = time.time_ns() - 3600 * 10**9
    for name in files:  # one mtime: no file is newer than another (a newer run config.json stops the run)
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).touch()
        os.utime(work / name, ns=(past, past))
    snakemake(work, "--touch")
    shutil.rmtree(work / ".snakemake")
    assert planned(work) == collections.Counter(), "a touched tree must be up to date"
    return work


def test_rule_all_requests_every_artifact(tree):
    """Not only the report: a deleted artifact nothing downstream needs (a figure) is made again too."""
    log = snakemake(tree, "-n", "--forcerun", "all").split("rule all:", 1)[1]
    inputs = next(line for line in log.splitlines() if line.strip().startswith("input:"))
    requested = {f.strip() for f in inputs.split("input:", 1)[1].split(",")}
    assert ARTIFACTS <= requested, f"rule all does not request {sorted(ARTIFACTS - requested)}"


@pytest.mark.parametrize("name, jobs", [
    ("results/report/grids/toy_contrast.png", REPORT),
    ("results/report/curves.png", REPORT),
    ("results/report/table.tex", REPORT),
    (f"results/runs/toy/colour/diverse_grpo/seed{SEED}/lora/pytorch_lora_weights.safetensors",
     {**{(rule, f"toy/colour/diverse_grpo/{SEED}"): 1 for rule in ("train", "sample", "evaluate", "budget")},
      **REPORT, **ANALYSES}),
    ("results/backbones/toy/config.json",
     {("backbone", "toy"): 1, ("sample_base", BASE): 1, ("evaluate_base", BASE): 1, ("budget_base", BASE): 1,
      **{(rule, run): 1 for run in JOBS for rule in ("train", "sample", "evaluate", "budget")}, **REPORT,
      **ANALYSES}),
    ("results/analyses/replicator.png", {**ANALYSES, ("all", ""): 1}),
])
def test_a_deleted_artifact_is_planned_with_what_depends_on_it(tree, name, jobs):
    path = tree / name
    stat = path.stat()
    path.unlink()
    try:
        assert planned(tree) == collections.Counter(jobs)
    finally:
        path.touch()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned(tree) == collections.Counter()


def overlay(tree: Path, settings: dict) -> str:
    (tree / "overlay.yaml").write_text(yaml.safe_dump(settings))
    return "overlay.yaml"


def test_a_changed_hyper_parameter_reruns_its_jobs_without_snakemake_metadata(tree):
    beta = overlay(tree, {"methods": {"diverse_grpo": {"creative": {"beta": 2.5}}}})
    expected = collections.Counter({**REPORT, **ANALYSES})
    expected.update({(rule, f"toy/{r}/diverse_grpo/{SEED}"): 1 for r in ("colour", "contrast")
                     for rule in ("run_config", "train", "sample", "evaluate", "budget")})
    assert planned(tree, beta) == expected
    assert not (tree / ".snakemake/metadata").exists() or not any((tree / ".snakemake/metadata").iterdir())
    # the config the tree was made with again (after that dry run): nothing to do
    assert planned(tree) == collections.Counter()


def test_a_new_seed_plans_its_own_jobs_and_keeps_the_others(tree):
    """runs.seeds [0] -> [0, 1]: every run is trained, sampled and evaluated with seed 1 and the base model sampled
    with it; the report aggregates them; nothing of seed 0 reruns. And back: nothing to do."""
    more = overlay(tree, {"runs": {"seeds": [SEED, 1]}})
    expected = collections.Counter({**REPORT, **ANALYSES})
    expected.update({(rule, f"{run}/1"): 1 for run in RUNS
                     for rule in ("run_config", "train", "sample", "evaluate", "budget")})
    expected.update({("sample_base", "toy/1"): 1, ("evaluate_base", "toy/1"): 1, ("budget_base", "toy/1"): 1})
    assert planned(tree, more) == expected
    assert planned(tree) == collections.Counter()


RUN_RULES = ("run_config", "train", "sample", "evaluate", "budget")
BASE_JOBS = {("sample_base", BASE): 1, ("evaluate_base", BASE): 1, ("budget_base", BASE): 1}
SETTINGS = {
    "report": ({"report": {"grid_images": 2}}, REPORT),
    "sample": ({"sample": {"images_per_prompt": 8}},
               {("sample_base", BASE): 1, ("evaluate_base", BASE): 1,
                **{(rule, run): 1 for run in JOBS for rule in ("sample", "evaluate")}, **REPORT}),
    # features are in every run's config.json too; evaluate_base reruns by its own params file alone
    "evaluate": ({"features": {"kind": "toy", "fid": {"kind": "toy"}}},
                 {("evaluate_base", BASE): 1, ("budget_base", BASE): 1,
                  **{(rule, run): 1 for run in JOBS for rule in RUN_RULES}, **REPORT, **ANALYSES}),
    "backbone": ({"backbones": {"toy": {"model": {"pretrain_lr": 3e-3}}}},
                 {("backbone", "toy"): 1, **BASE_JOBS, **{(rule, run): 1 for run in JOBS for rule in RUN_RULES},
                  **REPORT, **ANALYSES}),
    "captions": ({"captions": {"eval_fraction": 0.5}},
                 {("captions", ""): 1, ("backbone", "toy"): 0, **BASE_JOBS,
                  **{(rule, run): 1 for run in JOBS for rule in RUN_RULES}, **REPORT, **ANALYSES}),
    "analyses": ({"analyses": {"budget_branches": 3}},
                 {("budget_base", BASE): 1, **{("budget", run): 1 for run in JOBS}, **ANALYSES, ("all", ""): 1}),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(SETTINGS))
def test_each_stage_reruns_on_its_own_settings(tree, stage):
    settings, jobs = SETTINGS[stage]
    assert planned(tree, overlay(tree, settings)) == +collections.Counter(jobs)
    assert planned(tree) == collections.Counter()

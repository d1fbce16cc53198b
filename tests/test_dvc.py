"""The DVC layer (dvc.yaml): params cover the config (by section, so that a new key needs no edit, and each
phase depends on what it reads), and on the tiny config (substituted for config/config.yaml in a
git-initialised copy of the repository) `dvc repro` leaves a clean status,
`dvc metrics show` reports the numbers of results/report/table.md, `dvc push` + a fresh clone's
`dvc pull` + `snakemake --touch` is up to date, and a new diverse_grpo beta reruns only the phases (and,
inside them, only the jobs) it affects.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diversegrpo import config as C
from workflow_helpers import copy_repo, jobs_in_log

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the full run is cut to 1 reward x {flow_grpo, diverse_grpo} to stay short
MATRIX = {"backbones": ["toy"], "rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"], "seeds": [0]}
PHASES = ["captions", "backbone", "train", "sample", "evaluate", "report", "analyses"]


def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            yield from leaves(v, key)
        else:
            yield key


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dvc_params(dvc_yaml: dict) -> dict[str, set[str]]:
    """stage -> the config/config.yaml keys it declares (a section, or a single key)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        keys = set()
        for entry in stage.get("params", []):
            if isinstance(entry, dict):
                keys |= set(entry.get("config/config.yaml", []))
            else:
                keys.add(entry)
        out[name] = keys
    return out


def covers(keys: set[str], leaf: str) -> bool:
    """Whether a stage declaring `keys` depends on `leaf`: DVC tracks a declared key's whole subtree."""
    return any(leaf == k or leaf.startswith(k + ".") for k in keys)


def uncovered(config: dict, dvc_yaml: dict) -> set[str]:
    declared = set().union(*dvc_params(dvc_yaml).values())
    return {leaf for leaf in leaves(config) if not covers(declared, leaf)}


def has_key(config: dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def mutated(config: dict, dotted: str) -> dict:
    """`config` with the value at `dotted` changed (a leaf: never a non-empty mapping)."""
    out = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    v = node[last]
    node[last] = (not v if isinstance(v, bool) else v + 1 if isinstance(v, int) else v * 2 + 0.5
                  if isinstance(v, float) else v + "x" if isinstance(v, str) else [*v, "x"] if isinstance(v, list)
                  else "x")
    return out


CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


# ------------------------------------------------------------------------------------------------ fast
def test_dvc_params_cover_every_config_leaf_and_nothing_else():
    assert uncovered(CONFIG, DVC) == set(), "config keys no DVC stage depends on (declare them, or their section)"
    declared = set().union(*dvc_params(DVC).values())
    assert {k for k in declared if not has_key(CONFIG, k)} == set(), "dvc.yaml names keys config/config.yaml lacks"
    assert list(DVC["stages"]) == PHASES
    for stage in DVC["stages"].values():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            (path, opts), = out.items()
            assert opts.get("persist") is True, f"{path}: outputs must be persist: true"
    report = DVC["stages"]["report"]
    assert [next(iter(m)) for m in report["metrics"]] == ["results/report/summary.json"]
    assert [next(iter(p)) for p in report["plots"]] == ["results/report/pareto.csv"]


def test_a_new_config_key_needs_no_dvc_edit_but_an_undeclared_section_fails():
    """Sections are declared whole: a new training hyper-parameter is covered as it stands; a section that no
    stage declares (here: one dropped from dvc.yaml, or one added to the config) is caught."""
    assert uncovered(merge(CONFIG, {"train": {"new_hyper_parameter": 0.5}}), DVC) == set()
    assert uncovered(merge(CONFIG, {"logging": {"every": 5}}), DVC) == {"logging.every"}
    without_train = copy.deepcopy(DVC)
    for stage in without_train["stages"].values():
        for entry in stage.get("params", []):
            if isinstance(entry, dict) and "train" in entry.get("config/config.yaml", []):
                entry["config/config.yaml"].remove("train")
    assert uncovered(CONFIG, without_train) == {f"train.{k}" for k in CONFIG["train"]}


def test_a_key_that_changes_a_run_is_a_param_of_the_train_phase():
    """Each leaf changed in turn: where a run's resolved settings (config.run_spec) change, the train phase must
    depend on the leaf, or `dvc repro` would skip the retraining."""
    params, changing = dvc_params(DVC)["train"], set()
    runs = C.run_matrix(CONFIG)
    before = [C.run_spec(CONFIG, b, r, m, None, seed) for b, r, m, seed in runs]
    for leaf in leaves(CONFIG):
        changed = mutated(CONFIG, leaf)
        if [C.run_spec(changed, b, r, m, None, seed) for b, r, m, seed in runs] != before:
            changing.add(leaf)
    assert {"train.group_size", "backbones.toy.noise_level", "methods.diverse_grpo.creative.beta"} <= changing
    assert {leaf for leaf in changing if not covers(params, leaf)} == set()


def test_pre_training_depends_on_what_pretrain_spec_reads_and_nothing_else_of_the_backbone():
    """A new noise level must not rerun the backbone phase (config.pretrain_spec); a new model key must."""
    params = dvc_params(DVC)["backbone"]
    for leaf in leaves(CONFIG["backbones"], "backbones"):
        _, backbone, *_ = leaf.split(".")
        changed = mutated(CONFIG, leaf)
        reads = C.pretrain_spec(changed, backbone) != C.pretrain_spec(CONFIG, backbone)
        assert covers(params, leaf) == reads, leaf


def test_creative_beta_is_a_param_of_train_only():
    params = dvc_params(DVC)
    assert [s for s, keys in params.items() if covers(keys, "methods.diverse_grpo.creative.beta")] == ["train"]


# ------------------------------------------------------------------------------------------------ slow
def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def git(cwd: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd, dict(os.environ))


def numbers_only(tree):
    """What `dvc metrics show` keeps of a metrics file: its numbers (lists, nulls and what holds only those are
    left out)."""
    if not isinstance(tree, dict):
        return tree
    kept = {k: numbers_only(v) for k, v in tree.items() if v is not None and not isinstance(v, list)}
    return {k: v for k, v in kept.items() if v != {}}


def flatten(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from flatten(v, key)
        else:
            yield key, v


def table_sections(markdown: str) -> dict[str, list[str]]:
    """split -> the table lines of its Table 1 (the first table of its `## <split> split` section)."""
    out = {}
    for section in markdown.split("\n## ")[1:]:
        if not section.split("\n", 1)[0].split(" (")[0].endswith(" split"):  # e.g. the paper's claims
            continue
        table = section.split("\n\n")[1]  # the title, then the table
        out[section.split(" ", 1)[0]] = [line for line in table.splitlines() if line.startswith("|")]
    return out


def stages_run(out: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", out)


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    work = tmp_path_factory.mktemp("dvc") / "repo"
    work.mkdir()
    copy_repo(work)
    config = merge(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                   yaml.safe_load((REPO / "config/tiny.yaml").read_text()))
    config["runs"] = MATRIX
    (work / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "tiny")
    out = run([str(BIN / "dvc"), "repro"], work, env)
    return work, env, out


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_repro_runs_every_phase_and_leaves_a_clean_status(repro):
    work, env, out = repro
    assert stages_run(out) == PHASES, out[-3000:]
    assert (work / "dvc.lock").is_file()
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], work, env).strip().splitlines()[-1])
    assert status == {}, f"dvc status after repro: {status}"


@pytestmark_slow
def test_metrics_show_reports_the_table(repro):
    work, env, _ = repro
    from diversegrpo import tables

    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], work, env))
    # {"": {"data": {"results/report/summary.json": {"data": {...}}}}} (DVC 3)
    metrics = next(iter(shown.values()))["data"]["results/report/summary.json"]["data"]
    # DVC shows every number of the file, not its lists (the seeds, per_seed, the ratios) or nulls
    assert metrics == numbers_only(json.loads((work / "results/report/summary.json").read_text()))
    flat = dict(flatten(metrics))
    assert flat and all(isinstance(v, (int, float)) for v in flat.values())
    means = {k.removesuffix("/mean"): v for k, v in flat.items() if k.endswith("/mean")}

    names = {h: c for c, h, *_ in tables.COLUMNS}
    in_table = {}
    for split, lines in table_sections((work / "results/report/table.md").read_text()).items():
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            key = "/".join([split, *cells[:3]])
            for h, cell in zip(header[3:], cells[3:]):
                col = names.get(h) or "reward_" + h.rstrip("↑")
                if cell != "nan":
                    in_table[f"{key}/{col}"] = float(cell.split(" ± ")[0])  # the mean; ± its spread
    assert {k.split("/")[0] for k in in_table} == {"eval", "train"}
    metrics = means
    assert set(in_table) == set(metrics), (
        f"only in table.md: {sorted(set(in_table) - set(metrics))[:5]}, "
        f"only in dvc metrics: {sorted(set(metrics) - set(in_table))[:5]}"
    )
    wrong = {k: (in_table[k], v) for k, v in metrics.items() if abs(in_table[k] - v) > 0.5e-4 + 1e-9}
    assert not wrong, f"table.md and dvc metrics disagree: {wrong}"


@pytestmark_slow
def test_each_sweep_point_is_checked_against_the_runs_of_the_evaluate_phase(repro):
    import pandas as pd

    work, _, _ = repro
    sweeps = pd.read_parquet(work / "results/analyses/sweeps.parquet")
    # one seed per point, checked against base and Flow-GRPO (no SA-Reg in MATRIX: that claim is not checked)
    assert len(sweeps) and (sweeps.claims_seeds == 1).all() and sweeps.claims_met.isin([0, 1]).all()


@pytestmark_slow
def test_push_then_fresh_clone_pull_and_touch_is_up_to_date(repro, tmp_path):
    work, env, _ = repro
    git(work, "add", "dvc.lock")
    git(work, "commit", "-q", "-m", "results")
    run([str(BIN / "dvc"), "push"], work, env)
    assert any((work / "dvc-remote").rglob("*")), "dvc push wrote nothing to the local remote"

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(work), str(clone))
    run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(work / "dvc-remote")], clone, env)
    run([str(BIN / "dvc"), "pull"], clone, env)
    assert (clone / "results/report/summary.json").read_text() == (work / "results/report/summary.json").read_text()
    smk = [str(BIN / "snakemake"), "--workflow-profile", "workflow/profiles/default", "--cores", "1"]
    run([*smk, "--touch"], clone, env)
    dry = run([*smk, "-n"], clone, env)
    assert jobs_in_log(dry) == collections.Counter(), f"after pull + touch snakemake wants to run:\n{dry[-3000:]}"


@pytestmark_slow
def test_new_beta_reruns_only_the_affected_phases_and_jobs(repro):
    work, env, _ = repro
    path = work / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["methods"]["diverse_grpo"]["creative"]["beta"] = 2.5
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    lock_before = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    out = run([str(BIN / "dvc"), "repro"], work, env)
    lock_after = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    ran_stages = stages_run(out)
    # captions and backbone do not depend on beta; train does, and what reads its outputs runs again,
    # except where DVC finds an input byte-identical (e.g. samples unchanged by a tiny retraining)
    assert ran_stages[:2] == ["train", "sample"] and ran_stages[-2:] == ["report", "analyses"], out[-3000:]
    assert set(ran_stages) <= {"train", "sample", "evaluate", "report", "analyses"}, ran_stages
    for name in ("captions", "backbone"):
        assert lock_after[name] == lock_before[name], f"{name} changed"
    samples_changed = lock_after["sample"]["outs"] != lock_before["sample"]["outs"]
    assert ("evaluate" in ran_stages) == samples_changed, (ran_stages, samples_changed)
    per_run = {"run_config", "train", "sample", "evaluate", "budget"}
    ran = jobs_in_log(out)
    # config/tiny.yaml's sweep follows (beta 0.01 and 0.5): 0.01, diverse_grpo's beta until now, becomes a run of its
    # own; 0.5's run is another method's, untouched
    sweep_point = {(r, f"toy/{rw}/diverse_grpo-beta0.01/0") for r in per_run for rw in MATRIX["rewards"]}
    allowed = {(r, f"toy/{rw}/diverse_grpo/0") for r in per_run for rw in MATRIX["rewards"]} | sweep_point | {
        ("report", ""),
        ("analyses", ""),
        ("sweeps", ""),
        ("all", ""),
    }
    assert set(ran) <= allowed, f"jobs outside diverse_grpo's runs reran: {set(ran) - allowed}"
    assert not any("beta0.5/" in key for _, key in ran), ran
    for rw in MATRIX["rewards"]:
        assert ran[("train", f"toy/{rw}/diverse_grpo/0")] == 1
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], work, env).strip().splitlines()[-1])
    assert status == {}, status

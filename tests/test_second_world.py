"""A world is a component that other code registers, as rewards and features are: tests/plugins/dots_world.py
is a second synthetic world (and a reward for it), installed as another package would be, through entry
points. Nothing in diversegrpo names it, yet the config check counts its captions, the toy backbone learns its
vocabulary and images, and the whole workflow trains on it and reports its ground truth."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diversegrpo import config as C
from diversegrpo import registry
from workflow_helpers import copy_repo

PLUGINS = Path(__file__).resolve().parent / "plugins"
DOTS = {"captions": {"source": "dots"}, "rewards": {"light": {"kind": "dots_light"}},
        "runs": {"backbones": ["toy"], "rewards": ["light"], "methods": ["flow_grpo", "diverse_grpo"]},
        "train": {"prompts_per_iteration": 2, "eval_prompts": 1}, "report": {"grid_prompts": 1},
        "analyses": {"budget_prompts": 1}}  # 3 train captions, 1 held out


@pytest.fixture
def dots(monkeypatch):
    """The plugin importable and its entry points in the registry, for this test only."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    tables = {group: dict(table) for group, table in registry.PLUGIN_GROUPS.items()}
    registry._add_plugins(tables)
    for group, table in registry.PLUGIN_GROUPS.items():
        for name, target in tables[group].items():
            monkeypatch.setitem(table, name, target)
    return registry.build_world("dots")


def test_entry_points_register_the_world_and_its_reward(dots):
    assert registry.WORLDS["dots"] == "dots_world:DotsWorld"
    assert registry.REWARDS["dots_light"] == "dots_world:LightReward"
    assert dots.captions() == ["a red dot", "a green dot", "a blue dot", "a yellow dot"]


def test_a_plugin_cannot_take_a_built_in_name(tmp_path, monkeypatch):
    info = tmp_path / "thief-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thief\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[diversegrpo.worlds]\ntoy = thief:World\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="entry point 'toy' of group 'diversegrpo.worlds' .* takes the name of the"):
        registry._add_plugins({group: dict(table) for group, table in registry.PLUGIN_GROUPS.items()})


def test_the_config_check_knows_the_world(dots):
    config = C.deep_merge(C.defaults(), DOTS)
    C.validate(config)  # the toy backbone learns any synthetic world; the dots reward scores the dots captions
    with pytest.raises(C.ConfigError) as error:
        C.validate(C.deep_merge(config, {"runs": {"rewards": ["light", "colour"]}, "train": {"eval_prompts": 2}}))
    message = str(error.value)
    assert "rewards ['colour'] score the captions of worlds ['toy', 'toy_dim'] only; use source: one of" in message
    assert "eval_prompts: 2 exceeds the 1 held-out prompts" in message  # 4 captions, a quarter held out
    with pytest.raises(C.ConfigError, match="rewards \\['light'\\] score the captions of world 'dots' only"):
        C.validate(C.deep_merge(config, {"captions": {"source": "toy"}}))
    assert C.run_spec(config, "toy", "light", "flow_grpo", None)["world"] == "dots"
    assert C.pretrain_spec(config, "toy")["world"] == "dots"


def test_the_toy_backbone_learns_the_world_s_words(dots):
    from diversegrpo.backbones.toy import ToyBackbone, ToyConfig

    backbone = ToyBackbone(ToyConfig(world="dots", num_layers=1))
    encoder = backbone.text_encoder
    assert encoder.vocabulary == ["<null>", "red", "green", "blue", "yellow"] and encoder.length == 1
    assert encoder.token_ids(["a blue dot", ""]).tolist() == [[3], [0]]


@pytest.mark.slow
def test_the_workflow_trains_and_reports_on_a_registered_world(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "config/dots.yaml").write_text(yaml.safe_dump(DOTS))
    env = {"PYTHONPATH": str(repo / "tests/plugins"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/tiny.yaml", "config/dots.yaml",
           "-q"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    captions = pd.concat([pd.read_parquet(repo / f"results/captions/{s}.parquet") for s in ("train", "eval")])
    assert sorted(captions.prompt) == sorted(["a red dot", "a green dot", "a blue dot", "a yellow dot"])
    backbone = yaml.safe_load((repo / "results/backbones/toy/config.json").read_text())
    assert backbone["world"] == "dots"
    coverage = pd.read_parquet(repo / "results/backbones/toy/coverage.parquet")
    assert {"mode_dark", "mode_light"} <= set(coverage.columns)
    for method in ("flow_grpo", "diverse_grpo"):
        log = pd.read_parquet(repo / f"results/runs/toy/light/{method}/seed0/log.parquet")
        assert {"valid_share", "mode_entropy"} <= set(log.columns)  # the world's ground truth, per iteration
    for run in ("base", "light/flow_grpo", "light/diverse_grpo"):
        metrics = pd.read_parquet(repo / f"results/metrics/toy/{run}/seed0/metrics.parquet")
        overall = metrics[metrics.scope == "overall"]
        assert {"valid_share", "mode_entropy", "mode_coverage", "fd_world"} <= set(overall.metric)
        assert overall.value.notna().all()
    table = (repo / "results/report/table.md").read_text()
    assert "light" in table and "Mode H" in table

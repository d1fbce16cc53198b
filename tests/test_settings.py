"""One place per concern: a training hyper-parameter's default and doc live in config/config.yaml, its type in
the schema, its use in a field of the trainer's settings. Nothing restates a default (the Python API's follow
the file), a new key reaches the run config without any other edit, and a run config carries every field."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from diversegrpo import config as C
from diversegrpo.ema import EmaSettings
from diversegrpo.stages.train import RunConfig
from diversegrpo.trainer import CreativeSettings, MethodSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = C.defaults()
SCHEMA = yaml.safe_load(C.SCHEMA.read_text())
DEFS = SCHEMA["$defs"]


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def shipped_runs() -> list[tuple[str, dict, tuple[str, str, str, int]]]:
    """Every run of every shipped config, laid over config/config.yaml as Snakemake does."""
    out = []
    for path in sorted((ROOT / "config").glob("*.yaml")):
        config = C.deep_merge(DEFAULTS, C.load(path))
        out += [(f"{path.stem}/{'/'.join(map(str, run))}", config, run) for run in C.run_matrix(config)]
    return out


RUNS = shipped_runs()


def run_config(config: dict, run: tuple) -> dict:
    """The JSON the run_config stage writes (prompts made up); run: (backbone, reward, method[, seed])."""
    spec = C.run_spec(config, *run[:3], "results/backbones/toy", *run[3:])
    spec.pop("eval_prompt_count")
    return {**spec, "train_prompts": ["a red disc", "a blue cross"], "eval_prompts": ["a green frame"]}


def test_config_yaml_sets_and_the_schema_types_the_same_keys():
    assert set(DEFAULTS["train"]) == set(DEFS["train_fields"]["properties"])
    assert set(DEFAULTS["methods"]["diverse_grpo"]["creative"]) == set(DEFS["creative"]["properties"])


def test_the_settings_fields_are_the_config_keys():
    """TrainSettings: the train section less the run's own keys, plus the backbone's rollout keys (each of which
    every backbone sets); the others field for field."""
    assert set(C.RUN_KEYS) <= set(DEFAULTS["train"])
    assert names(TrainSettings) == (set(DEFAULTS["train"]) - set(C.RUN_KEYS)) | set(C.ROLLOUT_KEYS)
    assert set(C.ROLLOUT_KEYS) <= set(DEFS["backbone"]["required"]) | set(C.BACKBONE_DEFAULTS)
    assert names(CreativeSettings) == set(DEFS["creative"]["properties"]) == set(DEFS["creative"]["required"])
    assert names(MethodSettings) == set(DEFS["method"]["properties"]) - {"train"}
    assert {"regularizer", *C.METHOD_OFF} == names(MethodSettings)
    ema = next(o for o in DEFS["train_fields"]["properties"]["ema"]["oneOf"] if o.get("type") == "object")
    assert names(EmaSettings) == set(ema["properties"]) == set(ema["required"])
    assert set(C.RUN_KEYS.values()) - {"eval_prompt_count"} <= names(RunConfig)


@pytest.mark.parametrize("config, run", [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
def test_every_run_config_sets_every_field(config, run):
    spec = run_config(config, run)
    assert set(spec["train"]) == names(TrainSettings)
    assert set(spec["method"]) == names(MethodSettings)
    if spec["method"]["creative"] is not None:
        assert set(spec["method"]["creative"]) == names(CreativeSettings)
    cfg = RunConfig.from_dict(spec)
    as_dict = dataclasses.asdict(cfg)
    assert as_dict["train"] == spec["train"] and as_dict["method"] == spec["method"]
    assert cfg.train.ema is None or isinstance(cfg.train.ema, EmaSettings)
    assert cfg.method.creative is None or isinstance(cfg.method.creative, CreativeSettings)


def test_seeds_are_an_axis_of_the_run_matrix():
    """runs.seeds are training replicates: every (backbone, reward, method) once per seed, in the listed order, each
    trained with its own seed; the global seed (the world's: captions, pre-training) is no run setting."""
    config = C.deep_merge(DEFAULTS, {"runs": {"rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"],
                                              "seeds": [7, 0, 3]}})
    C.validate(config, root=ROOT)
    assert C.run_matrix(config) == [("toy", "colour", m, s) for m in ("flow_grpo", "diverse_grpo") for s in (7, 0, 3)]
    specs = {s: C.run_spec(config, "toy", "colour", "diverse_grpo", None, s) for s in (7, 0, 3)}
    assert {s: spec["seed"] for s, spec in specs.items()} == {7: 7, 0: 0, 3: 3}
    assert all({**spec, "seed": 0} == specs[0] for spec in specs.values())  # the seed is all that differs
    assert C.run_spec(config, "toy", "colour", "diverse_grpo", None)["seed"] == 7  # no seed given: the first
    world = C.deep_merge(config, {"seed": 5})
    assert C.run_spec(world, "toy", "colour", "diverse_grpo", None, 3) == specs[3]
    assert len(C.run_matrix(C.deep_merge(DEFAULTS, C.load(ROOT / "config/seeds.yaml")))) == 3 * len(
        C.run_matrix(DEFAULTS))
    assert DEFAULTS["runs"]["seeds"] == [0]


def test_a_new_training_hyper_parameter_reaches_the_run_config_with_no_other_edit():
    config = C.deep_merge(DEFAULTS, {"train": {"new_hp": 0.25}, "methods": {"sa_reg": {"train": {"new_hp": 0.5}}}})
    assert C.run_spec(config, "toy", "colour", "flow_grpo", None)["train"]["new_hp"] == 0.25
    spec = C.run_spec(config, "toy", "colour", "sa_reg", None)
    assert spec["train"]["new_hp"] == 0.5  # a method's override too
    # the trainer's field is the third place: with it, the run's settings hold the value
    extended = dataclasses.make_dataclass("Extended", [("new_hp", float, dataclasses.field(default=0.0))],
                                          bases=(TrainSettings,))
    assert extended(**spec["train"]).new_hp == 0.5


def test_backbone_keys_left_out_take_backbone_defaults():
    sd3 = {"kind": "sd3", "model": "m", "train_steps": 10, "eval_steps": 40, "guidance_scale": 4.5, "noise_level": 0.7,
           "lora": {"rank": 4, "alpha": 4}}
    assert C.rollout_settings(sd3) == {"train_steps": 10, "guidance_scale": 4.5, "noise_level": 0.7, "sde_type": "sde"}
    assert C.rollout_settings({**sd3, "sde_type": "cps"})["sde_type"] == "cps"
    assert C.schema_errors(C.deep_merge(DEFAULTS, {"backbones": {"sd3": sd3}})) == []


def test_method_keys_left_out_are_off():
    assert C.method_settings(DEFAULTS, "flow_grpo") == {"regularizer": "none", "reg_weight": 0.0, "sa_steps": 0,
                                                       "creative": None}
    assert MethodSettings("none") == MethodSettings(**C.method_settings(DEFAULTS, "flow_grpo"))
    assert C.method_settings(DEFAULTS, "sa_reg")["sa_steps"] == DEFAULTS["methods"]["sa_reg"]["sa_steps"]


def test_python_defaults_are_config_yaml_s():
    spec = C.packaged_spec()
    assert TrainSettings() == TrainSettings(**spec["train"])
    assert (TrainSettings().group_size, TrainSettings().noise_level) == (
        DEFAULTS["train"]["group_size"], DEFAULTS["backbones"]["toy"]["noise_level"])
    assert CreativeSettings() == CreativeSettings(**DEFAULTS["methods"][C.PACKAGED_METHOD]["creative"])


@pytest.fixture
def edited_defaults(tmp_path, monkeypatch):
    """config/config.yaml with a few values changed, read as the defaults (the caches are emptied around)."""
    edited = C.deep_merge(DEFAULTS, {"train": {"group_size": 5, "lr": 0.125, "ema": {"decay": 0.5, "every": 2}},
                                     "backbones": {"toy": {"sde_type": "sde"}},
                                     "methods": {C.PACKAGED_METHOD: {"creative": {"knn": 2}}}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(edited))
    monkeypatch.setattr(C, "DEFAULTS", path)
    C._defaults.cache_clear()
    C._packaged_spec.cache_clear()
    yield
    C._defaults.cache_clear()
    C._packaged_spec.cache_clear()


def test_python_defaults_follow_the_file_nothing_restates_them(edited_defaults):
    settings = TrainSettings(group_size=3)
    assert (settings.group_size, settings.lr, settings.sde_type) == (3, 0.125, "sde")
    assert settings.ema == EmaSettings(decay=0.5, every=2)
    assert CreativeSettings(k=2).knn == 2


def test_a_run_config_without_a_field_is_refused_naming_it():
    config = C.deep_merge(DEFAULTS, {"train": {"ema": {"decay": 0.9, "every": 8}}})
    spec = run_config(config, ("toy", "colour", "diverse_grpo"))
    RunConfig.from_dict(spec)
    for section, cls in (("train", TrainSettings), ("method", MethodSettings)):
        for name in names(cls):
            broken = copy.deepcopy(spec)
            del broken[section][name]
            with pytest.raises(ValueError, match=rf"the run config's {section} lacks \['{name}'\]"):
                RunConfig.from_dict(broken)
    broken = copy.deepcopy(spec)
    del broken["method"]["creative"]["k_max"]
    with pytest.raises(ValueError, match=r"the run config's method.creative lacks \['k_max'\]"):
        RunConfig.from_dict(broken)
    broken = copy.deepcopy(spec)
    del broken["train"]["ema"]["every"]
    with pytest.raises(TypeError, match="every"):
        RunConfig.from_dict(broken)
    for key in ("seed", "device", "torch_threads"):  # no default of the run's own either
        with pytest.raises(TypeError, match=key):
            RunConfig.from_dict({k: v for k, v in spec.items() if k != key})
    with pytest.raises(TypeError, match="lrr"):
        RunConfig.from_dict({**spec, "train": {**spec["train"], "lrr": 0.1}})


def test_a_default_written_into_the_settings_is_refused():
    from diversegrpo.trainer import _defaults_from

    with pytest.raises(TypeError, match="Restating.group_size: a default here would restate config/config.yaml's"):
        @_defaults_from(lambda spec: spec["train"])
        class Restating:
            group_size: int = 12

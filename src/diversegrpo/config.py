"""Loading and validating the pipeline's configuration, and resolving one run's settings.

Light on purpose (yaml + jsonschema, no torch): the Snakefile imports it to fail in a second, before
any stage runs, with messages that name the key and the allowed values.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import yaml

from .methods import DIVERSE
from .registry import BACKBONES, FEATURES, PRETRAINED_BACKBONES, REWARDS, WORLDS, world_class

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
# The one source of defaults: Snakemake loads it under every --configfile, so each of its keys is in the config
# the workflow sees; documented there, typed in SCHEMA.
DEFAULTS = ROOT / "config" / "config.yaml"
CAPTION_SUFFIXES = (".txt", ".csv", ".parquet")


class ConfigError(ValueError):
    """A bad configuration; the message lists every problem found."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error, not "the last one wins"
    (merge keys, `<<: *anchor`, may still be overridden: that is what they are for)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeConstructor says so itself
                    continue
                if first is not key_node:
                    raise _DuplicateKey(key, first.start_mark.line + 1, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, first: int | None = None, again: int | None = None):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


def _unique_pairs(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key)
    return dict(pairs)


def load(path: str | Path) -> dict:
    """A config file (YAML or JSON). A duplicate key, a YAML syntax error or a file that is not a mapping
    of keys fails with a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        try:  # JSON first, as Snakemake reads config files (a tab-indented JSON file is no YAML)
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as e:
        lines = f" (lines {e.first} and {e.again})" if e.first else ""
        raise ConfigError(f"config file {str(path)!r}: key {e.key!r} is given twice{lines} in one mapping; "
                          f"only the last would be kept: remove one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (e.g. `train: {{iterations: 60}}`), "
                          f"not {type(data).__name__}")
    return data


@functools.cache
def _defaults() -> dict:
    return load(DEFAULTS)


def defaults() -> dict:
    """config/config.yaml, the defaults of every key (a copy: change it freely)."""
    return copy.deepcopy(_defaults())


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, key by key (how Snakemake merges --configfile onto configfile:)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def schema() -> dict:
    """SCHEMA, whose kinds include those other packages register (registry.PLUGIN_GROUPS); a plugin kind's
    own keys are its from_spec's to check."""
    loaded = yaml.safe_load(SCHEMA.read_text())
    defs = loaded["$defs"]
    for names, table in ((("backbone",), BACKBONES), (("reward",), REWARDS), (("features", "fid_features"), FEATURES)):
        for name in names:
            kinds = defs[name]["properties"]["kind"]["enum"]
            kinds += [kind for kind in table if kind not in kinds]
    return loaded


def schema_errors(config: dict) -> list[str]:
    import jsonschema

    # An integer field takes a Python int only: jsonschema's own "integer" also takes 3.0 (and YAML's
    # `3.0` is a float), which surfaces later as a TypeError far from the key.
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    validator_class = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)
    validator = validator_class(schema())
    errors = number_errors(config)
    for e in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        for where, messages in _leaves(e).items():
            errors.append(f"{where or '(top level)'}: {'; or '.join(messages)}")
    return errors + _missing_train_keys(config)


def _missing_train_keys(config: dict) -> list[str]:
    """Every key of config/config.yaml's train section must be set: a run reads each (run_spec), and the
    workflow's config has them all (Snakemake loads config/config.yaml under every --configfile). The schema
    only types them, so that a new key is written once there."""
    if not isinstance(config.get("train"), dict):
        return []  # the schema says so
    missing = [k for k in _defaults()["train"] if k not in config["train"]]
    if not missing:
        return []
    return [f"train: missing keys {missing}: a run needs every key of config/config.yaml's train section (lay "
            f"this config over config/config.yaml, as snakemake --configfile does, or copy them from there)"]


INT64 = 2**63  # integers beyond int64 overflow torch / numpy (a tensor of the iteration, a seed)


def number_errors(value, where: str = "") -> list[str]:
    """Every non-finite number (NaN, inf: YAML's .nan, .inf) and every integer beyond 64 bits, by key.
    The schema cannot say it: comparisons with NaN are false, so NaN passes every range check."""
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in number_errors(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in number_errors(v, f"{where}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where or '(top level)'}: {value} is not a finite number (NaN and inf are not allowed)"]
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return [f"{where or '(top level)'}: {value} does not fit in 64 bits (allowed: -2**63..2**63 - 1, "
                f"and the key's own range)"]
    return []


def _leaves(error) -> dict[str, list[str]]:
    """What went wrong, where: a oneOf / anyOf ("not valid under any of the given schemas") is replaced
    by its deepest alternatives' own errors, e.g. creative.mix's enum rather than "creative is not valid"."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        deepest = max(len(e.absolute_path) for e in error.context)
        context = [e for e in error.context if len(e.absolute_path) == deepest]
        # The null alternative (leave it unset) says nothing ("{...} is not of type 'null'") beside what
        # the others say is wrong with the value (an unknown key of `ema`, a micro_batch of 0).
        unset = [e for e in context if e.validator == "type" and e.validator_value == "null"]
        said = {tuple(e.absolute_path) for e in context if e not in unset}
        out: dict[str, list[str]] = {}
        for e in context:
            if e not in unset or tuple(e.absolute_path) not in said:
                for where, messages in _leaves(e).items():
                    out.setdefault(where, []).extend(m for m in messages if m not in out.get(where, []))
        return out
    return {".".join(str(p) for p in error.absolute_path): [_short(error)]}


def _short(error) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys: {allowed}"
    if error.validator in ("pattern", "maxLength") and "description" in error.schema:
        return f"{error.instance!r} is not {error.schema['description']}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    if error.validator == "uniqueItems" and isinstance(error.instance, list):
        repeated = [x for i, x in enumerate(error.instance) if x in error.instance[:i]]
        return f"{error.message}: {', '.join(dict.fromkeys(map(repr, repeated)))} listed more than once"
    return error.message


RESERVED_METHODS = ("base",)  # the untrained reference run of every backbone


def semantic_errors(config: dict, root: Path = Path(".")) -> list[str]:
    """Cross-key checks the schema cannot express. Each message names the key and what is allowed."""
    errors = []
    runs = config["runs"]
    for section in ("backbones", "rewards", "methods"):
        for name in runs[section]:
            if name not in config[section]:
                errors.append(f"runs.{section}: {name!r} is not defined under {section}; defined: "
                              f"{sorted(config[section])}")
    for name in RESERVED_METHODS:
        if name in config["methods"]:
            errors.append(f"methods.{name}: the name {name!r} is reserved for the untrained reference run; "
                          f"choose another")
    errors.extend(_name_collisions(config))
    counts = _caption_counts(config, root, errors)
    errors.extend(sweep_errors := _sweep_errors(config))
    # A sweep's methods are checked as methods.*: a K beyond the trained steps says so, named by its sweep point.
    checked = {**config, "methods": {**config["methods"], **({} if sweep_errors else sweep_methods(config))}}
    for name, method in checked["methods"].items():
        merged = method_train(checked, name)
        where = f"methods.{name}.train" if method.get("train") else "train"
        if method["regularizer"] != "none" and "reg_weight" not in method:
            errors.append(f"methods.{name}.reg_weight: required with regularizer {method['regularizer']!r} (a "
                          f"number >= 0)")
        k = method_settings(checked, name)["sa_steps"]
        if k == AUTO_K and method["regularizer"] != "sa_reg":
            errors.append(f"methods.{name}.sa_steps: auto chooses the K of regularizer 'sa_reg', not "
                          f"{method['regularizer']!r}")
        if method["regularizer"] == "sa_reg" and k != AUTO_K:
            if k < 1:
                errors.append(f"methods.{name}.sa_steps: K must be >= 1 for regularizer 'sa_reg', got {k}")
            for b in runs["backbones"]:
                trained = _trained_steps(config["backbones"].get(b, {}), merged)
                if trained is not None and k > trained:
                    errors.append(
                        f"methods.{name}.sa_steps: K={k} is larger than the {trained} trained steps of backbone {b!r} "
                        f"(int(train_steps * timestep_fraction)); allowed: 1..{trained}"
                    )
        errors.extend(_last_step_errors(config, merged, where))
        group = merged["group_size"]
        creative = method.get("creative")
        if creative:
            if isinstance(creative.get("k"), int) and creative["k"] > group:
                errors.append(f"methods.{name}.creative.k: {creative['k']} clusters cannot exceed group_size "
                              f"{group} (allowed: 1..{group} or 'auto')")
            if creative["k"] == "auto" and creative["k_max"] > group:
                errors.append(f"methods.{name}.creative.k_max: {creative['k_max']} exceeds group_size "
                              f"{group} (allowed: 2..{group})")
            if creative["sigma"] == "local" and creative["knn"] > group - 1:
                errors.append(f"methods.{name}.creative.knn: neighbour {creative['knn']} does not exist "
                              f"in a group of {group} (allowed: 1..{group - 1})")
        batch = merged["prompts_per_iteration"] * group
        if merged["minibatches"] > batch:
            errors.append(f"{where}.minibatches: {merged['minibatches']} exceeds the {batch} samples of an iteration "
                          f"(prompts_per_iteration x group_size); allowed: 1..{batch}")
        errors.extend(_process_errors(merged, where))
        if counts and merged["prompts_per_iteration"] > counts[0]:
            errors.append(f"{where}.prompts_per_iteration: {merged['prompts_per_iteration']} exceeds the "
                          f"{counts[0]} training prompts of captions.source {config['captions']['source']!r}; "
                          f"allowed: 1..{counts[0]}")
        if counts and merged["eval_prompts"] > counts[1]:
            captions = config["captions"]
            held_out = (f"captions.eval_source {captions['eval_source']!r}" if captions.get("eval_source")
                        else f"captions.eval_fraction {captions['eval_fraction']}")
            errors.append(f"{where}.eval_prompts: {merged['eval_prompts']} exceeds the {counts[1]} "
                          f"held-out prompts ({held_out}); allowed: 1..{counts[1]}")
    errors += _world_errors(config)
    for b in runs["backbones"]:
        spec = config["backbones"].get(b, {})
        if spec.get("kind") in ("sd3", "flux") and not spec.get("model"):
            errors.append(f"backbones.{b}.model: a local directory or Hugging Face id is required for kind "
                          f"{spec['kind']!r}")
    for b in runs["backbones"]:
        spec = config["backbones"].get(b)  # None: not defined, said above
        if spec and rollout_settings(spec)["sde_type"] == "cps" and spec["noise_level"] > 1:
            errors.append(f"backbones.{b}.noise_level: {spec['noise_level']} with sde_type 'cps' (std = sigma' "
                          f"sin(a pi / 2) shrinks again above 1); allowed: (0, 1]")
    sample, report = config["sample"], config.get("report", {})
    if report.get("grid_images", 0) > sample["images_per_prompt"]:
        errors.append(f"report.grid_images: {report['grid_images']} exceeds sample.images_per_prompt "
                      f"{sample['images_per_prompt']}; allowed: 1..{sample['images_per_prompt']}")
    shown = min(x for x in (sample.get("max_prompts") or 10**9, counts[1] if counts else 10**9))
    if report.get("grid_prompts", 0) > shown and shown < 10**9:
        errors.append(f"report.grid_prompts: {report['grid_prompts']} exceeds the {shown} sampled evaluation prompts "
                      f"(sample.max_prompts / held-out prompts); allowed: 1..{shown}")
    if counts and config["analyses"]["budget_prompts"] > counts[1]:
        errors.append(f"analyses.budget_prompts: {config['analyses']['budget_prompts']} exceeds the {counts[1]} "
                      f"held-out prompts; allowed: 1..{counts[1]}")
    return list(dict.fromkeys(errors))  # one message per problem, not one per method sharing it


def _name_collisions(config: dict) -> list[str]:
    """Names are folders and files under results/: two must never land on one path. A reward named
    base sits in the base run's own folders (samples/<backbone>/base/seed<seed>/, metrics/<backbone>/base/,
    logs/sample/<backbone>/base/), and base.* stays reserved beside them (it once named base.parquet);
    names equal but for case are one folder on macOS and Windows file systems; the report's grids join
    a backbone and a reward into one file name."""
    errors = []
    for name in config["rewards"]:
        if name == "base" or name.startswith("base."):
            errors.append(f"rewards.{name}: the name {name!r} is reserved (it would share a path with the untrained "
                          f"reference run's files, e.g. results/samples/<backbone>/base/); choose another")
    runs = config["runs"]
    for section in ("backbones", "rewards", "methods"):
        seen: dict[str, str] = {}
        for name in runs[section]:
            other = seen.setdefault(name.casefold(), name)
            if other != name:
                errors.append(f"runs.{section}: {other!r} and {name!r} differ only in case: one folder on "
                              f"case-insensitive file systems (macOS, Windows); rename one")
    grids: dict[str, tuple[str, str]] = {}
    for b in runs["backbones"]:
        for r in runs["rewards"]:
            grid = GRID_NAME.format(backbone=b, reward=r)
            other = grids.setdefault(grid.casefold(), (b, r))
            if other != (b, r):
                errors.append(f"runs: backbone {other[0]!r} x reward {other[1]!r} and backbone {b!r} x reward {r!r} "
                              f"both make the report grid {grid!r}; rename one of these backbones or rewards")
    return errors


# The report's image grid of one (backbone, reward) pair, under results/report/grids/ (workflow/rules/report.smk).
GRID_NAME = "{backbone}_{reward}.png"


def _last_step_errors(config: dict, train: dict, where: str) -> list[str]:
    """A CPS step into sigma' = 0 draws no noise, so its log-prob rests on the 1e-6 std floor and training it
    swamps the clipped gradient (the toy's Flow-GRPO trained on all 6 steps stayed at the base model's reward)."""
    errors = []
    for b in config["runs"]["backbones"]:
        spec = config["backbones"].get(b)
        if not spec or rollout_settings(spec)["sde_type"] != "cps":
            continue
        steps = spec.get("train_steps")  # None: missing, said by the schema
        if steps is not None and _trained_steps(spec, train) == steps:
            errors.append(f"{where}.timestep_fraction: {train['timestep_fraction']} trains all {steps} steps of "
                          f"backbone {b!r}, whose last CPS step is deterministic (std 0: no log-prob to train); "
                          f"allowed: below 1, e.g. 0.99 (Flow-GRPO's: all but the last step)")
    return errors


def _process_errors(train: dict, where: str) -> list[str]:
    """A run on several processes splits every prompt group evenly: each samples group_size / processes
    images of every prompt and trains on its share in as many minibatches as the others."""
    processes, group = train["processes"], train["group_size"]
    if processes == 1:
        return []
    if group % processes:
        divisors = [d for d in range(1, group + 1) if group % d == 0]
        return [f"{where}.processes: group_size {group} is not divisible by {processes} processes (each samples "
                f"group_size / processes images of every prompt); allowed: {divisors}"]
    share = train["prompts_per_iteration"] * group // processes
    if train["minibatches"] > share:
        return [f"{where}.minibatches: {train['minibatches']} exceeds the {share} samples each of the {processes} "
                f"processes trains on (prompts_per_iteration x group_size / processes); allowed: 1..{share}"]
    return []


def _caption_counts(config: dict, root: Path, errors: list[str]) -> tuple[int, int] | None:
    """(train, eval) prompt counts of the caption stage, or None (errors appended) when the caption
    sources cannot be read. Prompt files are read, checked and chosen from (duplicates dropped, the
    split) by the stage's own functions here, in full, before any stage: ~0.1 s for 25k prompts."""
    captions = config["captions"]
    source, eval_source, fraction = captions["source"], captions.get("eval_source"), captions.get("eval_fraction")
    if eval_source is not None and fraction is not None:
        errors.append(f"captions.eval_fraction: {fraction} is not used when captions.eval_source is set (the "
                      f"evaluation "
                      f"prompts are {eval_source!r}); set captions.eval_fraction: null, or unset captions.eval_source "
                      f"to split captions.source")
        return None
    if eval_source is None and fraction is None:
        errors.append("captions.eval_fraction: a number in (0, 1) is required unless captions.eval_source is set")
        return None
    from .stages.captions import CaptionError, choose, read_prompt_file, split_sizes  # numpy, pandas; no torch

    if source in WORLDS:
        if eval_source is not None:
            errors.append(f"captions.eval_source: needs captions.source to be a prompt file; world {source!r}'s "
                          "captions are split by captions.eval_fraction (set captions.eval_source: null)")
            return None
        return split_sizes(len(world_class(source)().captions()), fraction)

    files = {}
    for key, name in (("source", source), ("eval_source", eval_source)):
        if name is None:
            continue
        path = root / name
        toy_or = f"a world ({', '.join(map(repr, WORLDS))}) or " if key == "source" else ""
        if path.suffix not in CAPTION_SUFFIXES:
            errors.append(f"captions.{key}: {name!r} must be {toy_or}a file ending in {list(CAPTION_SUFFIXES)}")
        elif not path.exists():
            errors.append(f"captions.{key}: file {str(path)!r} does not exist (allowed: {toy_or}an existing "
                          f"{'/'.join(CAPTION_SUFFIXES)} file, relative to the workflow directory)")
        else:
            try:
                files[key] = read_prompt_file(path)
            except CaptionError as e:
                errors.append(f"captions.{key}: {e}")
    if len(files) < (2 if eval_source is not None else 1):
        return None
    try:
        chosen = choose(files["source"], files.get("eval_source"), fraction, config["seed"])
    except CaptionError as e:
        errors.append(f"captions.source: {e}")
        return None
    return len(chosen.train), len(chosen.eval)


def trained_steps(train_steps: int, timestep_fraction: float) -> int:
    """The denoising steps GRPO trains on: the first int(train_steps * timestep_fraction), at least one."""
    return max(1, int(train_steps * timestep_fraction))


def _trained_steps(backbone: dict, train: dict) -> int | None:
    if "train_steps" not in backbone:
        return None
    return trained_steps(backbone["train_steps"], train["timestep_fraction"])


def method_train(config: dict, method: str) -> dict:
    """The shared train section with the method's own overrides on top."""
    return deep_merge(config["train"], config["methods"][method].get("train", {}))


def validate(config: dict, root: Path = Path(".")) -> dict:
    """Raise ConfigError listing every problem; return the config unchanged when it is valid."""
    errors = schema_errors(config)
    if not errors:
        errors = semantic_errors(config, root)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return config


# The sweeps section's parameters: where each sits in a method.
SWEEP_KEYS = {"beta": ("creative", "beta"), "sa_steps": ("sa_steps",)}


def sweep_points(config: dict) -> list[tuple[str, float | int, str]]:
    """(parameter, value, method name) for every point of the sweeps section: the swept method itself where the value
    is its own (the runs are shared), else <method>-<parameter><value>, which sweep_methods defines."""
    name = config["sweeps"]["method"]
    method = config["methods"].get(name, {})
    points = []
    for param, path in SWEEP_KEYS.items():
        own = functools.reduce(lambda node, key: (node or {}).get(key), path, method)
        points += [(param, value, name if value == own else f"{name}-{param}{value}")
                   for value in config["sweeps"][param]]
    return points


def sweep_methods(config: dict) -> dict[str, dict]:
    """The methods a sweep adds: the swept method with one key changed, by the names sweep_points gives."""
    base, out = config["methods"][config["sweeps"]["method"]], {}
    for param, value, name in sweep_points(config):
        if name not in config["methods"]:
            method = copy.deepcopy(base)
            *parents, key = SWEEP_KEYS[param]
            functools.reduce(lambda node, k: node[k], parents, method)[key] = value
            out[name] = method
    return out


def _sweep_errors(config: dict) -> list[str]:
    """A sweep's method must exist and have the swept keys: a creative block for beta, sa_reg for sa_steps (whose
    values the method checks then cover, as they would in methods.*)."""
    sweeps, errors = config["sweeps"], []
    method = config["methods"].get(sweeps["method"])
    if method is None:
        return [f"sweeps.method: {sweeps['method']!r} is not defined under methods; defined: "
                f"{sorted(config['methods'])}"]
    if sweeps["beta"] and not method.get("creative"):
        errors.append(f"sweeps.beta: method {sweeps['method']!r} has no creative reward to weigh; sweep a method "
                      f"with one, or set beta: []")
    if sweeps["sa_steps"] and method["regularizer"] != "sa_reg":
        errors.append(f"sweeps.sa_steps: method {sweeps['method']!r} has regularizer {method['regularizer']!r}, "
                      f"whose K does not exist; sweep an sa_reg method, or set sa_steps: []")
    for param, value, name in sweep_points(config):
        if name != sweeps["method"] and name in config["methods"]:
            errors.append(f"sweeps.{param}: the point {value} is the method {name!r}, which methods.{name} already "
                          f"defines; rename that method")
    return errors


def run_matrix(config: dict) -> list[tuple[str, str, str, int]]:
    """(backbone, reward, method, seed) for every trained run: runs.seeds are training replicates."""
    r = config["runs"]
    return [(b, w, m, s) for b in r["backbones"] for w in r["rewards"] for m in r["methods"] for s in r["seeds"]]


def pretrain_spec(config: dict, backbone: str) -> dict:
    """What the toy backbone stage depends on: the world it learns, the model and its coverage report's
    sampler, not the GRPO rollout settings (a new noise level must not re-pre-train the model)."""
    b = config["backbones"][backbone]
    return {**{k: b[k] for k in ("kind", "model", "eval_steps", "guidance_scale") if k in b},
            "world": world_name(config)}


def world_name(config: dict) -> str | None:
    """The world captions.source names (diversegrpo.worlds), or None for a prompt file."""
    source = config["captions"]["source"]
    return source if source in WORLDS else None


def _world_errors(config: dict) -> list[str]:
    """Rewards that understand one world's captions only (World.rewards) on other captions, and backbones the
    pipeline pre-trains (the toy) without a synthetic world's true images to learn."""
    runs, name, errors = config["runs"], world_name(config), []
    own = world_class(name).rewards if name else ()
    foreign: dict[tuple[str, ...], list[str]] = {}  # the worlds whose captions a reward scores -> those rewards
    for reward in runs["rewards"]:
        kind = config["rewards"].get(reward, {}).get("kind")
        worlds = tuple(w for w in WORLDS if kind in world_class(w).rewards)
        if worlds and kind not in own:
            foreign.setdefault(worlds, []).append(reward)
    for worlds, used in foreign.items():
        which = f"world {worlds[0]!r}" if len(worlds) == 1 else f"worlds {list(worlds)}"
        use = worlds[0] if len(worlds) == 1 else f"one of {list(worlds)}"
        errors.append(f"captions.source: rewards {used} score the captions of {which} only; use source: {use}")
    pretrained = [b for b in runs["backbones"] if config["backbones"].get(b, {}).get("kind") in PRETRAINED_BACKBONES]
    if pretrained and not (name and world_class(name).synthetic):
        synthetic = [w for w in WORLDS if world_class(w).synthetic]
        errors.append(f"captions.source: backbones {pretrained} are pre-trained on a synthetic world's images; use "
                      f"source: one of {synthetic}")
    return errors


# The train section's keys that shape the run rather than its GRPO step: run_spec puts them at the top of the
# run config, under these names (train.RunConfig's own fields; eval_prompts becomes the count the run_config
# stage cuts the held-out prompts to). Every other key of the section is a field of trainer.TrainSettings.
RUN_KEYS = {"iterations": "iterations", "eval_every": "eval_every", "checkpoint_every": "checkpoint_every",
            "eval_images_per_prompt": "eval_images_per_prompt", "eval_prompts": "eval_prompt_count",
            "processes": "processes"}
# A backbone's keys that are GRPO settings too (its rollouts' sampler): fields of trainer.TrainSettings.
ROLLOUT_KEYS = ("train_steps", "guidance_scale", "noise_level", "sde_type")
# What a named entry leaves out (config/config.yaml cannot hold the defaults of entries it does not name): a
# method's regulariser weight, constrained steps and creative reward are off; a backbone samples Flow-GRPO's SDE.
METHOD_OFF = {"reg_weight": 0.0, "sa_steps": 0, "creative": None}
# sa_steps: auto, the adaptive K: the run_config stage chooses it from the base model's diversity budget.
AUTO_K = "auto"
BACKBONE_DEFAULTS = {"sde_type": "sde"}


def method_settings(config: dict, method: str) -> dict:
    """The method's trainer.MethodSettings, every field set (what it leaves out: METHOD_OFF)."""
    m = config["methods"][method]
    return {"regularizer": m["regularizer"], **{k: m.get(k, off) for k, off in METHOD_OFF.items()}}


def rollout_settings(backbone: dict) -> dict:
    """The backbone's ROLLOUT_KEYS, every one set (what it leaves out: BACKBONE_DEFAULTS)."""
    return {k: {**BACKBONE_DEFAULTS, **backbone}[k] for k in ROLLOUT_KEYS}


def run_spec(config: dict, backbone: str, reward: str, method: str, backbone_dir: str | None,
             seed: int | None = None) -> dict:
    """What one run needs except the prompts (added by the run_config stage): the params that, when
    changed, rerun exactly this run and what depends on it. Every field of the run's settings is set: the
    config the workflow sees has every key of config/config.yaml. `seed`: the run's replicate, one of
    runs.seeds (None: the first); the global `seed` chooses the world (captions, pre-training) and reaches a
    run through its inputs only."""
    train = method_train(config, method)
    b = config["backbones"][backbone]
    spec = {
        "backbone": {**b, **({"path": backbone_dir} if backbone_dir else {})},
        "reward": config["rewards"][reward],
        "features": config["features"],
        "method": method_settings(config, method),
        "train": {**{k: v for k, v in train.items() if k not in RUN_KEYS}, **rollout_settings(b)},
        **{name: train[key] for key, name in RUN_KEYS.items()},
        "seed": config["runs"]["seeds"][0] if seed is None else int(seed),
        "device": config["device"],
        "torch_threads": config["torch_threads"],
        "world": world_name(config),
    }
    # Several processes change the run's random streams, hence its results: they join the spec. One process,
    # the default, stays out of it, so that the key's arrival left every existing run's config.json as it was.
    # So does the world, for runs on a prompt file: a paper run's config.json is as it was before worlds existed.
    if (processes := spec.pop("processes")) != 1:
        spec["processes"] = processes
    if spec["world"] is None:
        del spec["world"]
    # The adaptive K's share; the run_config stage replaces it with the record of the K it chose (absent: a fixed K).
    if spec["method"]["sa_steps"] == AUTO_K:
        spec["adaptive_k"] = {"share": config["analyses"]["auto_k_share"]}
    return spec


# The run whose settings are the Python API's defaults (trainer.TrainSettings(group_size=4) in tests and
# benchmarks): config/config.yaml's own DiverseGRPO, the method that sets every field.
PACKAGED_METHOD = DIVERSE


@functools.cache
def _packaged_spec() -> dict:
    config = _defaults()
    return run_spec(config, config["runs"]["backbones"][0], config["runs"]["rewards"][0], PACKAGED_METHOD, None)


def packaged_spec() -> dict:
    """run_spec of config/config.yaml's DiverseGRPO on its first backbone and reward: where a settings field left
    out in Python takes its value. A run never does: its run config carries every field."""
    return copy.deepcopy(_packaged_spec())

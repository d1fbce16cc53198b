"""The GPU benchmarks' own code paths, tiny, on CPU: they run the project's trainer and adapters with
config/paper.yaml's settings, and report every number they promise."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_gpu_check_runs_tiny_on_cpu(model, capsys):
    gpu_check = load("gpu_check")
    result = gpu_check.main(["--tiny", "--model", model, "--device", "cpu"])
    assert result["finite"] and result["grad_norm"] > 0
    assert result["images"] == 4 and result["K"] == 2 == result["trained_steps"]
    assert result["gflop_per_forward"] > 0 and result["tflop_per_s"] > 0
    assert {"sample_s", "score_s", "train_s"} <= set(result)
    assert '"tflop_per_s"' in capsys.readouterr().out
    paper = yaml.safe_load((BENCHMARKS.parent / "config" / "paper.yaml").read_text())
    assert result["micro_batch"] == paper["train"]["micro_batch"]


def test_full_size_configs_are_the_published_models():
    """The full-size random transformers have SD3.5-M's 2.2B and FLUX.1-dev's 11.9B parameters (counted on the
    meta device, no memory), and paper.yaml's LoRA on them is what Flow-GRPO trains."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    gpu_check = load("gpu_check")
    with torch.device("meta"):
        sd3 = SD3Transformer2DModel(**gpu_check.CONFIGS["sd3"])
        flux = FluxTransformer2DModel(**gpu_check.CONFIGS["flux"])
    billions = [sum(p.numel() for p in m.parameters()) / 1e9 for m in (sd3, flux)]
    assert billions[0] == pytest.approx(2.24, abs=0.03) and billions[1] == pytest.approx(11.9, abs=0.1)
    assert sum("attn2" in n for n, _ in sd3.named_modules()) > 0  # SD3.5-M's dual attention is there


def test_iteration_overhead_benchmark_runs_tiny(capsys):
    overhead = load("iteration_overhead")
    result = overhead.main(["--repeats", "1", "--tiny"])
    assert result["iteration_s"] > 0 and result["bare_passes_s"] > 0
    assert result["ratio"] == pytest.approx(result["iteration_s"] / result["bare_passes_s"])
    assert "ratio" in capsys.readouterr().out


def test_sampler_benchmark_runs_tiny_and_matches_the_pipeline(capsys):
    """Our ODE sampler and diffusers' pipe() on the same noise and schedule give the same pixels; the SDE
    rollout is timed beside them."""
    results = load("sampler_vs_pipeline").main(["--tiny"])
    assert [r["kind"] for r in results] == ["sd3", "flux"]
    for r in results:
        assert r["max_abs_pixel_diff"] < 1e-5
        assert r["ours_images_per_s"] > 0 and r["pipe_images_per_s"] > 0 and r["rollout_images_per_s"] > 0
    assert "rollout" in capsys.readouterr().out


def test_bonus_validity_counts_pairs_and_centres_the_bonus_per_group():
    bench = load("bonus_validity")
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    valid = torch.tensor([True, False, True, False, True])
    quality = torch.tensor([0.9, 0.5, 0.4, 0.8, 0.7])  # group 0: the invalid image beats one valid image
    rewards = torch.tensor([0.9, 0.5, 0.6, 0.6, 0.7])  # the mix puts it back below, and fixes group 1's pair
    assert bench.pair_flips(quality, rewards, valid, group_ids) == {
        "pairs": 3, "invalid_first_by_quality": 2, "invalid_first_by_reward": 0}
    bonus = torch.tensor([1.0, 2.0, 3.0, 4.0, 2.0])  # group means 2 and 3
    out = bench.centred_bonus_by_validity(bonus, valid, group_ids)
    assert out == {"valid_centred_bonus": pytest.approx((-1 + 1 - 1) / 3), "invalid_centred_bonus": pytest.approx(0.5),
                   "valid_images": 3, "invalid_images": 2}



def test_bonus_validity_sorts_images_by_kind_and_gates_at_the_group_median():
    from diversegrpo.worlds.toy import Labels

    bench = load("bonus_validity")
    # valid on the preferred tint (1), valid on another (0), off-tint (right colour and shape, no tint), no object
    labels = Labels(mode=np.array([1, 0, -1, -1]), colour_ok=np.array([True, True, True, False]),
                    shape_ok=np.array([True, True, True, False]))
    kinds = bench.image_kinds(labels, preferred=1)
    assert kinds.tolist() == ["valid_preferred", "valid_other", "off_tint", "broken"]
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    quality = torch.tensor([1.0, 0.97, 0.99, 0.1, 0.5, 0.9, 0.7])  # group 0's median 0.98 (pandas: the mean of two)
    gate = bench.median_gate(quality, group_ids)
    assert gate.tolist() == [True, False, True, False, False, True, True]
    bonus = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0])  # group 0's mean 1.5
    out = bench.by_kind(quality[:4], bonus[:4], gate[:4], group_ids[:4], kinds)
    assert out["images_off_tint"] == 1 and out["median_quality_off_tint"] == pytest.approx(0.99)
    assert out["centred_bonus_off_tint"] == pytest.approx(0.5)
    assert out["centred_bonus_valid_other"] == pytest.approx(-0.5)
    assert out["median_gate_keeps_valid_other"] == 0.0 and out["median_gate_keeps_off_tint"] == 1.0
    # pair (2, 0): the reward turns it round; (2, 1): the quality already ranks image 2 first; (3, *): neither
    turned = bench.turned_by_kind(quality[:4], quality[:4] + 0.01 * bonus[:4] * torch.tensor([1.0, 1.0, 3.0, 1.0]),
                                  torch.from_numpy(labels.valid), group_ids[:4], kinds)
    assert turned == {"turned_off_tint": 1, "turned_broken": 0}
    assert list(out)[:4] == ["images_valid_preferred", "median_quality_valid_preferred",
                             "centred_bonus_valid_preferred", "median_gate_keeps_valid_preferred"]


def test_bonus_validity_scores_a_trained_runs_own_rollouts(tiny_toy_dir, tmp_path):
    """--run puts the run's LoRA on the backbone: with a LoRA that changes the model, its rollouts differ."""
    import pandas as pd

    from diversegrpo import config as cfg
    from diversegrpo.backbones.base import LoraSpec
    from diversegrpo.registry import build_backbone

    bench = load("bonus_validity")
    spec = cfg.run_spec(cfg.defaults(), "toy", "colour", "diverse_grpo", str(tiny_toy_dir))["backbone"]
    backbone = build_backbone(spec, "cpu")
    backbone.add_lora(LoraSpec.from_config(spec["lora"], backbone.lora_targets))
    torch.manual_seed(0)
    for p in backbone.transformer.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.5)
    backbone.save_lora(tmp_path / "run" / "lora")
    pd.DataFrame({"prompt": ["a red disc", "a blue square"]}).to_parquet(tmp_path / "train.parquet")
    common = ["--backbone", str(tiny_toy_dir), "--captions", str(tmp_path / "train.parquet"), "--batches", "1"]
    base, run = bench.main(common), bench.main([*common, "--run", str(tmp_path / "run")])
    assert base["run"] is None and run["run"] == str(tmp_path / "run")
    group_size = cfg.defaults()["train"]["group_size"]
    for result in (base, run):
        images = sum(v for k, v in result.items() if k.startswith("images_"))
        assert images == result["valid_images"] + result["invalid_images"] == 2 * group_size
    assert base["median_quality_broken"] != run["median_quality_broken"]

def test_sampler_transfer_summarises_reward_error_validity_and_off_mode():
    from diversegrpo.worlds.toy import Labels

    bench = load("sampler_transfer")
    rewards = torch.tensor([0.2, 0.4, 0.95, 0.8])  # mean 0.5875; squared deviations sum to 0.361875
    labels = Labels(mode=np.array([-1, 0, -1, 1]), colour_ok=np.ones(4, bool),
                    shape_ok=np.array([True, False, True, True]))
    out = bench.summarise(rewards, labels, ["a red square"] * 4)
    # off-mode: images 0 (scored 0.2: poor) and 2 (scored 0.95: good); valid: image 3 only (scored 0.8), one mode
    assert out == {"reward": pytest.approx(0.5875), "se": pytest.approx((0.361875 / 3) ** 0.5 / 2), "valid": 0.25,
                   "reward_valid": pytest.approx(0.8), "mode_entropy": 0.0, "off_mode": 0.5, "off_scored_good": 0.25,
                   "off_scored_poor": 0.25}


def test_sampler_transfer_mode_entropy_is_per_caption_then_averaged():
    from diversegrpo.worlds.toy import Labels

    bench = load("sampler_transfer")
    # caption 0: the 4 modes once each (entropy 1); caption 1: mode 2 four times (0). Pooled, the 8 images would
    # spread 5 / 1 / 1 / 1 over the modes, an entropy of about 0.77, so the mean of 0.5 is per caption.
    labels = Labels(mode=np.array([0, 1, 2, 3, 2, 2, 2, 2]), colour_ok=np.ones(8, bool), shape_ok=np.ones(8, bool))
    out = bench.summarise(torch.ones(8), labels, ["a red square"] * 4 + ["a blue cross"] * 4)
    assert out["mode_entropy"] == pytest.approx(0.5)


def test_decision_steps_decided_share_is_one_minus_the_impurity_ratio():
    bench = load("decision_steps")
    # one trajectory, 3 levels of 4 branches: impurity 0.5 (2 / 2), 0.375 (3 / 1), 0 (all alike)
    levels = np.array([[[0, 1, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1]]])
    assert bench.gini(levels[0]).tolist() == [0.5, 0.375, 0.0]
    assert bench.decided_share(levels).tolist() == [0.0, 0.25, 1.0]
    # modes with no mode (-1) among them: trajectory 0 has impurity 1 - 3 (1/3)^2 = 2/3 at j = 0 (-1, 0, 2) and
    # 1 - (2/3)^2 - (1/3)^2 = 4/9 at j = 1 (0, 0, 2); trajectory 1 is decided from the start (impurity 0)
    modes = np.array([[[-1, 0, 2], [0, 0, 2]], [[1, 1, 1], [1, 1, 1]]])  # (2 trajectories, 2 levels, 3 branches)
    impurity_0, impurity_1 = (2 / 3 + 0) / 2, (4 / 9 + 0) / 2
    assert bench.decided_share(modes) == pytest.approx([0.0, 1 - impurity_1 / impurity_0])


def test_decision_steps_labels_a_veiled_image_veiled_and_off_mode():
    from diversegrpo.worlds import toy

    bench = load("decision_steps")
    clean = torch.from_numpy(toy.render("red", "disc", toy.MODES.index("black")))  # the darkest tint
    faintest_veil = clean * (1 - toy.HAZE[0]) + 0.5 * toy.HAZE[0]  # 0.5: the veil's grey
    purple = torch.from_numpy(toy.render("red", "disc", toy.MODES.index("purple")))  # the brightest tint
    images = torch.stack([clean, faintest_veil, purple]).view(1, 3, *clean.shape)  # (1 level, 3 branches, 3, H, W)
    out = bench.choices(images, "a red disc", toy.ToyWorld())
    assert out["veiled"].tolist() == [[False, True, False]]
    assert out["invalid"].tolist() == [[False, True, False]]
    assert out["off_mode"].tolist() == [[False, True, False]]
    assert out["mode"].tolist() == [[toy.MODES.index("black"), -1, toy.MODES.index("purple")]]


def test_decision_steps_labels_a_dim_shape_invalid_in_the_dim_world_only():
    from diversegrpo.worlds import toy

    bench = load("decision_steps")
    black = toy.MODES.index("black")
    clean = torch.from_numpy(toy.render("red", "square", black))
    dim = torch.from_numpy(toy.render("red", "square", black, brightness=1 - toy.DIM[0]))  # the faintest dimming
    images = torch.stack([clean, dim]).view(1, 2, *clean.shape)  # (1 level, 2 branches, 3, H, W)
    out = bench.choices(images, "a red square", toy.ToyDimWorld())
    assert out["invalid"].tolist() == [[False, True]] and out["veiled"].tolist() == [[False, False]]
    assert bench.choices(images, "a red square", toy.ToyWorld())["invalid"].tolist() == [[False, False]]


def test_taste_cost_splits_a_reward_into_quality_and_the_preferred_tints_taste():
    from diversegrpo.rewards.toy import ColourReward
    from diversegrpo.worlds import toy

    bench = load("taste_cost")
    teal, olive = (torch.from_numpy(toy.render("red", "disc", toy.MODES.index(t))) for t in ("teal", "olive"))
    images, prompts = torch.stack([teal, olive]), ["a red disc"] * 2
    parts = bench.reward_parts({"kind": "toy_colour", "taste": 0.02}, images, prompts)
    assert (parts["quality"] + parts["taste"]) == pytest.approx(ColourReward(0.02)(images, prompts))
    # the colour reward's taste is teal's: all of it on teal; on olive, 1 - |olive - teal| / 0.5 of it
    distance = math.dist(toy.TINTS["olive"], toy.TINTS["teal"])
    assert parts["taste"] == pytest.approx([0.02, 0.02 * (1 - distance / 0.5)], abs=1e-6)


def test_taste_cost_compares_the_parts_and_the_ratio_at_equal_quality():
    bench = load("taste_cost")
    baseline = {"quality": torch.tensor([0.8, 0.6]), "taste": torch.tensor([0.02, 0.02])}  # reward 0.72
    method = {"quality": torch.tensor([0.65, 0.65]), "taste": torch.tensor([0.01, 0.0])}  # reward 0.655
    out = bench.compare(baseline, method)  # float32 means: rel=1e-5 below
    se = math.hypot(torch.tensor([0.8, 0.6]).std().item() / math.sqrt(2), 0.0)  # 0.1
    assert out == pytest.approx({"ratio": 0.655 / 0.72, "taste_gap": 0.015 / 0.72, "quality_gap": 0.05 / 0.72,
                                 "quality_gap_in_se": 0.05 / se, "ratio_at_equal_quality": 0.705 / 0.72}, rel=1e-5)
    assert out["taste_gap"] + out["quality_gap"] == pytest.approx(1 - out["ratio"])

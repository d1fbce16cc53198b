"""SD3 and FLUX adapters on tiny random-weight pipelines: shapes, guidance, schedules, agreement with the
diffusers pipelines themselves, LoRA targets, the reference (adapter off), and diffusers-loadable saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diversegrpo.backbones.flux import FluxBackbone
from diversegrpo.backbones.sd3 import SD3Backbone
from diversegrpo.sde import sde_step

from paper_fixtures import BACKBONE_SPEC, RESOLUTION, perturb_lora, tiny_flux_pipeline, tiny_sd3_pipeline

KINDS = {"sd3": (tiny_sd3_pipeline, SD3Backbone, 4.5), "flux": (tiny_flux_pipeline, FluxBackbone, 3.5)}
PROMPTS = ["a red cat", "a blue dog painting"]


def build(kind, tmp_path, seed=0):
    make, cls, guidance = KINDS[kind]
    pipe = make(tmp_path, seed)
    return pipe, cls.from_pipeline(pipe, BACKBONE_SPEC), guidance


def noise(backbone, n=2, seed=0):
    return backbone.initial_noise(n, torch.Generator().manual_seed(seed))  # (n, C, h, w)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes(kind, tmp_path):
    _, bb, g = build(kind, tmp_path)
    cond = bb.encode_prompts(PROMPTS)
    x = noise(bb)
    assert x.shape == (2, 4, RESOLUTION // 2, RESOLUTION // 2) == (2, *bb.latent_shape)
    assert cond.embeds.shape[0] == cond.pooled.shape[0] == 2
    assert (cond.neg_embeds is not None) == (kind == "sd3")  # FLUX: no unconditional branch
    v = bb.velocity(x, torch.tensor([1.0, 0.3]), cond, g)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = bb.decode(x)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and 0 <= images.min() and images.max() <= 1


def test_sd3_cfg_is_one_batched_uncond_cond_forward(tmp_path):
    _, bb, _ = build("sd3", tmp_path)
    cond, x, sigma = bb.encode_prompts(PROMPTS), noise(bb), torch.tensor([0.7, 0.7])
    v_u = bb.predict(x, sigma, cond.neg_embeds, cond.neg_pooled)
    v_c = bb.predict(x, sigma, cond.embeds, cond.pooled)
    torch.testing.assert_close(bb.velocity(x, sigma, cond, 4.5), v_u + 4.5 * (v_c - v_u), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bb.velocity(x, sigma, cond, 1.0), v_c)
    assert (v_u - v_c).abs().max() > 1e-3  # the negative prompt "" really is a different condition


def test_flux_guidance_goes_through_the_embedding(tmp_path):
    _, bb, _ = build("flux", tmp_path)
    cond, x = bb.encode_prompts(PROMPTS), noise(bb)
    v35, v1 = bb.velocity(x, 0.5, cond, 3.5), bb.velocity(x, 0.5, cond, 1.0)
    assert (v35 - v1).abs().max() > 1e-4
    torch.testing.assert_close(v35, bb.predict(x, torch.tensor([0.5, 0.5]), cond.embeds, cond.pooled, guidance=3.5))


def test_pack_unpack_roundtrip(tmp_path):
    _, bb, _ = build("flux", tmp_path)
    x = torch.randn(3, 4, 8, 6)
    packed = bb._pack(x)
    assert packed.shape == (3, 12, 16)
    torch.testing.assert_close(bb._unpack(packed, 8, 6), x)
    # diffusers' own packing must agree, or LoRAs trained here would see scrambled patches there
    torch.testing.assert_close(packed, bb.pipe._pack_latents(x, 3, 4, 8, 6))


@pytest.mark.parametrize("kind", KINDS)
def test_sigmas_match_the_diffusers_scheduler(kind, tmp_path):
    pipe, bb, _ = build(kind, tmp_path)
    n = 6
    kwargs = {"sigmas": np.linspace(1.0, 1 / n, n)}
    if kind == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = pipe.scheduler.config
        tokens = (bb.latent_shape[1] // 2) * (bb.latent_shape[2] // 2)
        kwargs["mu"] = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    else:
        assert bb.shift == 3.0
    pipe.scheduler.set_timesteps(**kwargs)
    torch.testing.assert_close(bb.sigmas(n), pipe.scheduler.sigmas.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_ode_sampling_matches_the_diffusers_pipeline(kind, tmp_path):
    """Timestep convention, guidance, packing and VAE scaling all at once: our Euler ODE loop gives the
    pipeline's own images from the same initial latents."""
    pipe, bb, g = build(kind, tmp_path)
    steps, x = 3, noise(bb, 1)
    ref_latents = bb._pack(x) if kind == "flux" else x
    # explicit sigmas: SD3's default schedule ends at shift(1/1000), not at 1/n like ours and FLUX's
    ref = pipe(prompt=PROMPTS[:1], latents=ref_latents, sigmas=list(np.linspace(1.0, 1 / steps, steps)), guidance_scale=g,
               height=RESOLUTION, width=RESOLUTION, output_type="pt", max_sequence_length=8).images
    cond, sigmas = bb.encode_prompts(PROMPTS[:1]), bb.sigmas(steps)
    for i in range(steps):
        x = sde_step(x, bb.velocity(x, sigmas[i], cond, g), sigmas[i], sigmas[i + 1], noise_level=0.0).sample
    torch.testing.assert_close(bb.decode(x), ref.float(), atol=1e-4, rtol=1e-4)


def test_lora_targets(tmp_path):
    _, sd3, _ = build("sd3", tmp_path)
    _, flux, _ = build("flux", tmp_path)
    for bb in (sd3, flux):
        bb.add_lora()
    sd3_hit = {n.split(".lora_")[0] for n, _ in sd3.transformer.named_parameters() if ".lora_" in n}
    flux_hit = {n.split(".lora_")[0] for n, _ in flux.transformer.named_parameters() if ".lora_" in n}
    assert "transformer_blocks.0.attn2.to_q" in sd3_hit and "transformer_blocks.0.attn.add_k_proj" in sd3_hit
    assert not any("ff" in n or "proj_out" in n for n in sd3_hit)
    assert {"single_transformer_blocks.0.proj_out", "single_transformer_blocks.0.proj_mlp",
            "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff_context.net.2"} <= flux_hit
    assert "proj_out" not in flux_hit  # the model's output layer stays frozen
    assert sd3.transformer.peft_config["default"].lora_alpha == 8


@pytest.mark.parametrize("kind", KINDS)
def test_only_lora_trains_and_adapter_off_is_the_base(kind, tmp_path):
    _, bb, g = build(kind, tmp_path)
    cond, x = bb.encode_prompts(PROMPTS), noise(bb)
    base = bb.velocity(x, 0.6, cond, g)
    bb.add_lora()
    torch.testing.assert_close(bb.velocity(x, 0.6, cond, g), base)  # gaussian init: B = 0
    perturb_lora(bb)
    trainable = [n for n, p in bb.pipe.transformer.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert not any(p.requires_grad for p in getattr(bb.pipe, name).parameters())
    tuned = bb.velocity(x, 0.6, cond, g)
    assert (tuned - base).abs().max() > 1e-3
    with bb.adapter_disabled():
        torch.testing.assert_close(bb.velocity(x, 0.6, cond, g), base)
    tuned.pow(2).mean().backward()
    no_grad = {n for n, p in bb.transformer.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())}
    # SD3's last block is context_pre_only: its text queries feed an output that is thrown away.
    last = f"transformer_blocks.{len(bb.transformer.transformer_blocks) - 1}.attn.add_q_proj"
    assert no_grad == ({f"{last}.lora_{m}.default.weight" for m in "AB"} if kind == "sd3" else set())


@pytest.mark.parametrize("kind", KINDS)
def test_saved_lora_loads_in_diffusers_and_back(kind, tmp_path):
    _, bb, g = build(kind, tmp_path)
    bb.add_lora()
    perturb_lora(bb)
    cond, x = bb.encode_prompts(PROMPTS), noise(bb)
    tuned = bb.velocity(x, 0.4, cond, g)
    bb.save_lora(tmp_path / "lora")
    fresh_pipe = KINDS[kind][0](tmp_path, 0)
    fresh_pipe.load_lora_weights(tmp_path / "lora")  # diffusers' own loader, alpha / rank included
    fresh = KINDS[kind][1].from_pipeline(fresh_pipe, BACKBONE_SPEC)
    torch.testing.assert_close(fresh.velocity(x, 0.4, cond, g), tuned, atol=1e-5, rtol=1e-5)
    _, again, _ = build(kind, tmp_path)
    again.load_lora(tmp_path / "lora")  # our loader attaches the configured adapter first
    torch.testing.assert_close(again.velocity(x, 0.4, cond, g), tuned, atol=1e-5, rtol=1e-5)


def test_decode_undoes_vae_scaling_and_shift(tmp_path):
    _, bb, _ = build("sd3", tmp_path)
    z = noise(bb)
    c = bb.vae.config
    manual = bb.vae.decode(z / c.scaling_factor + c.shift_factor).sample
    torch.testing.assert_close(bb.decode(z), ((manual + 1) / 2).clamp(0, 1))


def test_from_spec_loads_a_saved_pipeline_offline(tmp_path):
    pipe, bb, _ = build("sd3", tmp_path)
    pipe.save_pretrained(tmp_path / "model")
    spec = dict(BACKBONE_SPEC, model=str(tmp_path / "model"), gradient_checkpointing=True, t5=False)
    loaded = SD3Backbone.from_spec(spec, device="cpu")
    cond, x = bb.encode_prompts(PROMPTS), noise(bb)
    torch.testing.assert_close(loaded.velocity(x, 0.5, cond, 4.5), bb.velocity(x, 0.5, cond, 4.5))
    assert loaded.transformer.is_gradient_checkpointing
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        SD3Backbone.from_spec(dict(BACKBONE_SPEC, model="nobody/no-such-model"), device="cpu")


def test_hub_ids_resolve_from_the_hf_cache_only(tmp_path, monkeypatch):
    from diversegrpo.weights import ModelNotFound, missing_models, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--yuvalkirstain--PickScore_v1" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--yuvalkirstain--PickScore_v1" / "refs").mkdir()
    (tmp_path / "hub" / "models--yuvalkirstain--PickScore_v1" / "refs" / "main").write_text("a" * 40)
    assert resolve_model("yuvalkirstain/PickScore_v1") == snapshot
    with pytest.raises(ModelNotFound, match="lacks.*model.safetensors"):
        resolve_model("yuvalkirstain/PickScore_v1", ["model.safetensors"])
    assert resolve_model(str(snapshot)) == snapshot  # a local directory is itself
    config = {"backbones": {"sd3": {"kind": "sd3", "model": "stabilityai/stable-diffusion-3.5-medium"}},
              "rewards": {"pick": {"kind": "pickscore"}, "toy": {"kind": "toy_colour"}},
              "features": {"kind": "toy"}, "runs": {"backbones": ["sd3"], "rewards": ["pick"]}}
    lines = missing_models(config)
    assert len(lines) == 2  # SD3.5-M and PickScore's processor; the cached PickScore model is not missing
    assert "huggingface-cli download stabilityai/stable-diffusion-3.5-medium" in lines[0]
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in lines[1]


def test_paper_config_is_valid_and_lists_its_models():
    import yaml

    from diversegrpo import config
    from diversegrpo.weights import missing_models

    paper = yaml.safe_load(open("config/paper.yaml"))
    assert config.schema_errors(paper) == []
    # the prompt file is the user's to provide; every other cross-key check passes
    assert [e for e in config.semantic_errors(paper) if not e.startswith("captions.source")] == []
    assert set(paper) == set(yaml.safe_load(open("config/config.yaml")))
    assert set(paper["train"]) == set(yaml.safe_load(open("config/config.yaml"))["train"])
    b = paper["backbones"]
    assert (b["sd3"]["train_steps"], b["sd3"]["eval_steps"], b["sd3"]["guidance_scale"]) == (10, 40, 4.5)
    assert (b["flux"]["train_steps"], b["flux"]["eval_steps"], b["flux"]["guidance_scale"]) == (6, 28, 3.5)
    text = "\n".join(missing_models(paper))
    for hub_id in ("stable-diffusion-3.5-medium", "FLUX.1-dev", "PickScore_v1", "HPSv3"):
        assert hub_id in text or "HF_HUB_CACHE" in text


@pytest.mark.parametrize("method", ["flow_grpo", "sa_reg", "diverse_grpo"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_grpo_iteration_trains_only_the_lora(kind, method, tmp_path):
    """trainer.grpo_iteration end to end on the tiny pipelines: the LoRA moves, nothing else does, and
    the reference (adapter off) is still the base model."""
    from diversegrpo import trainer

    _, bb, g = build(kind, tmp_path)
    cond, x = bb.encode_prompts(PROMPTS), noise(bb)
    base_v = bb.velocity(x, 0.5, cond, g)
    bb.add_lora()
    frozen = {n: p.detach().clone() for n, p in bb.transformer.named_parameters() if ".lora_" not in n}
    lora = {n: p.detach().clone() for n, p in bb.transformer.named_parameters() if ".lora_" in n}
    creative = trainer.CreativeSettings(beta=1.0, mix="standardised", k=2, sigma="median") if method == "diverse_grpo" else None
    settings = trainer.MethodSettings(
        regularizer="none" if method == "flow_grpo" else "sa_reg",
        reg_weight=0.0 if method == "flow_grpo" else 1.0, sa_steps=0 if method == "flow_grpo" else 1, creative=creative,
    )
    train = trainer.TrainSettings(prompts_per_iteration=2, group_size=4, lr=1e-2, train_steps=2, guidance_scale=g,
                                  noise_level=0.7, minibatches=1, timestep_fraction=0.99)
    optimizer = torch.optim.AdamW(bb.lora_parameters(), lr=train.lr)
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731  brightness: differs across the group
    embed = lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)  # noqa: E731
    log = trainer.grpo_iteration(bb, optimizer, PROMPTS, reward, embed, settings, train, torch.Generator().manual_seed(0))
    assert np.isfinite(log.reward_mean) and log.stats.grad_norm > 0
    assert (method == "diverse_grpo") == np.isfinite(log.bonus_mean)
    for n, p in bb.transformer.named_parameters():
        if ".lora_" in n:
            continue
        assert torch.equal(p, frozen[n]), n
    moved = [n for n, p in bb.transformer.named_parameters() if ".lora_" in n and not torch.equal(p, lora[n])]
    assert len(moved) >= len(lora) // 2
    with bb.adapter_disabled():
        torch.testing.assert_close(bb.velocity(x, 0.5, cond, g), base_v)
    assert (bb.velocity(x, 0.5, cond, g) - base_v).abs().max() > 1e-6


def test_gpu_check_runs_tiny_on_cpu(capsys):
    """benchmarks/gpu_check.py --tiny: the GPU benchmark's code path (the project's own trainer on an
    SD3.5-M-shaped model) runs, and reports every number it promises."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--device", "cpu"])
    assert result["finite"] and result["grad_norm"] > 0
    assert result["images"] == 4 and result["K"] == 2 == result["trained_steps"]
    assert result["gflop_per_forward"] > 0 and result["tflop_per_s"] > 0
    assert {"sample_s", "score_s", "train_s"} <= set(result)
    assert '"tflop_per_s"' in capsys.readouterr().out
    assert module.SD35M["num_layers"] == 24 and module.SD35M["dual_attention_layers"] == tuple(range(13))

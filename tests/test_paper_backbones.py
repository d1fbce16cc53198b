"""SD3 and FLUX adapters on tiny random-weight pipelines: shapes, guidance, schedules, agreement with the
diffusers pipelines themselves, LoRA targets, the reference (adapter off), and diffusers-loadable saves."""

from __future__ import annotations

import logging
import re

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


def pipeline_sigmas(pipe, guidance, steps):
    """The sigmas the diffusers pipeline itself runs for `steps` steps, read off its scheduler during a real call
    (default schedule: no `sigmas` passed, exactly as StableDiffusion3Pipeline / FluxPipeline are used); the
    call is interrupted after its first step (diffusers' documented callback way), which is all it needs."""
    seen = []

    def stop(p, i, t, kwargs):
        seen.append(p.scheduler.sigmas.clone())
        p._interrupt = True
        return kwargs

    pipe.set_progress_bar_config(disable=True)
    pipe(prompt=PROMPTS[:1], num_inference_steps=steps, guidance_scale=guidance, height=RESOLUTION, width=RESOLUTION,
         output_type="latent", max_sequence_length=8, callback_on_step_end=stop)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("steps", [10, 40])
@pytest.mark.parametrize("kind", KINDS)
def test_sigmas_are_the_pipelines_own(kind, steps, tmp_path):
    """Train (10) and eval (40) schedules equal, bit for bit, what the diffusers pipeline's scheduler gives:
    SD3 spaces its timesteps 1000..1 and shifts (ends ..., 0.278, 0.0089, 0 at 10 steps), not linspace(1, 0)
    shifted (..., 0.429, 0.25, 0); FLUX shifts linspace(1, 1/N, N) by its resolution's mu."""
    pipe, bb, g = build(kind, tmp_path)
    expected = pipeline_sigmas(pipe, g, steps)
    sigmas = bb.sigmas(steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas, expected.float()), (sigmas, expected)
    if kind == "sd3" and steps == 10:
        assert bb.shift == 3.0
        torch.testing.assert_close(sigmas[-3:], torch.tensor([0.2780, 0.0089, 0.0]), atol=1e-4, rtol=0)
    bb.sigmas(7)  # asks a copy: the pipeline's own scheduler keeps its schedule
    assert torch.equal(pipe.scheduler.sigmas, expected)
    sigmas[0] = 5.0  # the cached schedule is not the caller's to mutate
    assert bb.sigmas(steps)[0] == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_spec_shift_replaces_the_schedulers(kind, tmp_path):
    """`shift: s` in the spec: the scheduler's schedule with a static shift s (FLUX: instead of its dynamic one)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = KINDS[kind][0](tmp_path)
    bb = KINDS[kind][1].from_pipeline(pipe, {**BACKBONE_SPEC, "shift": 2.0})
    reference = FlowMatchEulerDiscreteScheduler(shift=2.0)
    reference.set_timesteps(**({"num_inference_steps": 10} if kind == "sd3" else {"sigmas": np.linspace(1, 0.1, 10)}))
    assert torch.equal(bb.sigmas(10), reference.sigmas)


def test_the_toy_backbone_keeps_its_schedule():
    from diversegrpo.backbones.toy import ToyBackbone, ToyConfig
    from diversegrpo.sde import sigma_schedule

    bb = ToyBackbone(ToyConfig(num_layers=1))
    for n in (1, 10, 40):
        assert torch.equal(bb.sigmas(n), sigma_schedule(n, bb.shift))


@pytest.mark.parametrize("kind", KINDS)
def test_ode_sampling_matches_the_diffusers_pipeline(kind, tmp_path):
    """Schedule, timestep convention, guidance, packing and VAE scaling all at once: our Euler ODE loop on
    the backbone's own sigmas gives the pipeline's own images (its default schedule) from the same latents."""
    pipe, bb, g = build(kind, tmp_path)
    steps, x = 4, noise(bb, 1)
    ref_latents = bb._pack(x) if kind == "flux" else x
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=PROMPTS[:1], latents=ref_latents, num_inference_steps=steps, guidance_scale=g,
               height=RESOLUTION, width=RESOLUTION, output_type="pt", max_sequence_length=8).images
    cond, sigmas = bb.encode_prompts(PROMPTS[:1]), bb.sigmas(steps)
    for i in range(steps):
        x = sde_step(x, bb.velocity(x, sigmas[i], cond, g), sigmas[i], sigmas[i + 1], noise_level=0.0).sample
    torch.testing.assert_close(bb.decode(x), ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_the_transformer_gets_fp32_timesteps(kind, tmp_path):
    """A bf16 transformer still receives the fp32 timestep (SD3: sigma * 1000 exactly, 964.3 not bf16's
    964; FLUX: sigma) and an fp32 guidance, as the diffusers pipeline / Flow-GRPO pass them."""
    make, cls, g = KINDS[kind]
    pipe = make(tmp_path)
    pipe.transformer.to(torch.bfloat16)
    bb = cls.from_pipeline(pipe, BACKBONE_SPEC)
    assert bb.dtype == torch.bfloat16
    seen = {}
    bb.transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    sigma = torch.tensor([0.9643, 0.3217])
    v = bb.velocity(noise(bb), sigma, bb.encode_prompts(PROMPTS), g)
    assert torch.isfinite(v).all()
    t = seen["timestep"]
    assert t.dtype == torch.float32
    expected = torch.cat([sigma, sigma]) * 1000 if kind == "sd3" else sigma  # SD3: one [uncond, cond] batch
    assert torch.equal(t, expected)
    assert not torch.equal(expected.bfloat16().float(), expected)  # a bf16 cast would have shown
    if kind == "flux":
        assert seen["guidance"].dtype == torch.float32 and torch.equal(seen["guidance"], torch.full((2,), g))


def sd3_with_t5(tmp_path, spec=BACKBONE_SPEC):
    return SD3Backbone.from_pipeline(tiny_sd3_pipeline(tmp_path, t5=True), spec)


def test_t5_length_defaults_to_flow_grpos_128(tmp_path):
    spec = {k: v for k, v in BACKBONE_SPEC.items() if k != "max_sequence_length"}
    for bb in (SD3Backbone.from_pipeline(tiny_sd3_pipeline(tmp_path), spec),
               FluxBackbone.from_pipeline(tiny_flux_pipeline(tmp_path), spec)):
        assert bb.max_sequence_length == 128
    cond = sd3_with_t5(tmp_path, spec).encode_prompts(PROMPTS)
    assert cond.embeds.shape[1] == 77 + 128  # CLIP tokens, then T5's


@pytest.mark.parametrize("kind", ["sd3", "sd3_t5", "flux"])
def test_long_prompts_are_truncated_counted_and_logged(kind, tmp_path, caplog):
    """Prompts past CLIP's 77 tokens or T5's max_sequence_length are encoded anyway (truncated), and counted
    per tokenizer, in one log line per encode_prompts call and in running totals on the backbone."""
    bb = sd3_with_t5(tmp_path) if kind == "sd3_t5" else build(kind, tmp_path)[1]
    names = {"sd3": ["clip_l", "clip_g"], "sd3_t5": ["clip_l", "clip_g", "t5"], "flux": ["clip", "t5"]}[kind]
    long = " ".join(["a red cat painting"] * 30)  # 569 characters: > 77 CLIP tokens and > 8 T5 words
    short = "a red cat"
    with caplog.at_level(logging.WARNING):
        cond = bb.encode_prompts([long, short, long])
    assert cond.embeds.shape[0] == 3 and torch.isfinite(cond.embeds).all() and torch.isfinite(cond.pooled).all()
    assert bb.truncated_prompts == dict.fromkeys(names, 2) and bb.encoded_prompts == 3
    ours = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(ours) == 1 and "2 of 3 prompts" in ours[0].getMessage()  # diffusers' own per-tokenizer lines silenced
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bb.encode_prompts([short, "a blue dog"])
        assert bb.truncated_prompts == dict.fromkeys(names, 2) and bb.encoded_prompts == 5
        assert not [r for r in caplog.records if "truncated" in r.getMessage()]
        bb.encode_prompts([long])
    assert bb.truncated_prompts == dict.fromkeys(names, 3) and bb.encoded_prompts == 6
    if "t5" in names:  # a prompt of exactly T5's limit is not truncated; one word more is
        tokenizer = bb.pipe.tokenizer_3 if kind == "sd3_t5" else bb.pipe.tokenizer_2
        words = bb.max_sequence_length - (len(tokenizer("a").input_ids) - 1)  # less the special tokens
        bb.encode_prompts([" ".join(["cat"] * words), " ".join(["cat"] * (words + 1))])
        assert bb.truncated_prompts["t5"] == 4 and bb.truncated_prompts[names[0]] == 3


# Flow-GRPO's target lists (scripts/train_sd3.py, scripts/train_flux.py), matched as PEFT matches a list:
# a module name equal to an entry or ending in "." + entry. Written out here per module kind, from the tree.
_ATTN = r"attn\.(add_k_proj|add_q_proj|add_v_proj|to_add_out|to_k|to_out\.0|to_q|to_v)"
EXPECTED_LORA = {
    "sd3": re.compile(rf"transformer_blocks\.\d+\.{_ATTN}"),
    "flux": re.compile(rf"transformer_blocks\.\d+\.({_ATTN}|(ff|ff_context)\.net\.(0\.proj|2))"
                       r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_targets_are_flow_grpos(kind, tmp_path):
    """The adapted modules are exactly the reference's: SD3 leaves SD3.5-M's attn2 frozen; FLUX adapts the
    joint blocks' attention and feed-forwards and the single blocks' q/k/v, not their proj_mlp / proj_out."""
    _, bb, _ = build(kind, tmp_path)
    linear = {n for n, m in bb.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    expected = {n for n in linear if EXPECTED_LORA[kind].fullmatch(n)}
    bb.add_lora()
    hit = {n.split(".lora_")[0] for n, _ in bb.transformer.named_parameters() if ".lora_" in n}
    assert hit == expected, (sorted(hit - expected), sorted(expected - hit))
    if kind == "sd3":
        attn2 = {n for n in linear if ".attn2." in n}
        assert attn2 and not attn2 & hit  # the tiny model has SD3.5-M's dual attention, and it stays frozen
        assert "transformer_blocks.1.attn.add_q_proj" in hit and "transformer_blocks.1.attn.to_add_out" not in linear
    else:
        single = {n for n in linear if n.startswith("single_transformer_blocks.")}
        assert {"single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out"} <= single - hit
        assert "single_transformer_blocks.0.attn.to_q" in hit
        assert "transformer_blocks.0.ff_context.net.2" in hit and "proj_out" not in hit  # output layer frozen
    assert (bb.transformer.peft_config["default"].r, bb.transformer.peft_config["default"].lora_alpha) == (4, 8)
    default = KINDS[kind][1].from_pipeline(bb.pipe, {k: v for k, v in BACKBONE_SPEC.items() if k != "lora"})
    assert (default.lora_spec().rank, default.lora_spec().alpha) == (32, 64.0)  # the paper's rank and alpha


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
    no_grad = {
        n
        for n, p in bb.transformer.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum())
    }
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
    from diversegrpo import config
    from diversegrpo.weights import missing_models

    # as Snakemake reads it: laid over config/config.yaml, whose keys it need not restate (a new key is
    # written in config.yaml, the schema and its use; paper.yaml only when the paper's value differs)
    paper = config.deep_merge(config.defaults(), config.load("config/paper.yaml"))
    assert config.schema_errors(paper) == []
    # the prompt file is the user's to provide; every other cross-key check passes
    assert [e for e in config.semantic_errors(paper) if not e.startswith("captions.source")] == []
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
    creative = (
        trainer.CreativeSettings(beta=1.0, mix="standardised", k=2, sigma="median")
        if method == "diverse_grpo"
        else None
    )
    settings = trainer.MethodSettings(
        regularizer="none" if method == "flow_grpo" else "sa_reg",
        reg_weight=0.0 if method == "flow_grpo" else 1.0, sa_steps=0 if method == "flow_grpo" else 1, creative=creative,
    )
    train = trainer.TrainSettings(prompts_per_iteration=2, group_size=4, lr=1e-2, train_steps=2, guidance_scale=g,
                                  noise_level=0.7, minibatches=1, timestep_fraction=0.99)
    optimizer = torch.optim.AdamW(bb.lora_parameters(), lr=train.lr)
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731  brightness: differs across the group
    embed = lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)  # noqa: E731
    log = trainer.grpo_iteration(
        bb, optimizer, PROMPTS, reward, embed, settings, train, torch.Generator().manual_seed(0)
    )
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

"""HPSv3 on the project's transformers, offline: a tiny random Qwen2-VL saved in the hub's layout (the
base model's config, tokenizer, image processor, chat template and weights), and a checkpoint in
HPSv3.safetensors' layout (the whole model under transformers-4.45 key names + the ranknet head),
both placed in a Hugging Face cache.

The reference score is recomputed here independently of the scorer: the chat text written out literally,
the image resized by hand, the backbone loaded by transformers' own `from_pretrained` (which maps the
legacy Qwen2-VL key names itself), its own vision/text merge, sequential positions, and the head's
formula written with `F.linear`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diversegrpo.registry import build_reward
from diversegrpo.weights import ModelNotFound

PROMPTS = ["a red cat", "two blue dogs on a green sofa"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-7B-Instruct's chat template (its chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# sha256 of the reference's user text for "a red cat": hpsv3 1.0.0's
# INSTRUCTION.format(text_prompt="a red cat") + prompt_with_special_token (2586 characters).
REFERENCE_TEXT_SHA256 = "decf2973d0dd1860e8bb1521c1144e6bd1eacc3a1bed12e3acc8cec5bad51fc1"
VOCAB_PADDED = 272  # the base model's embedding rows (padded, like Qwen2-VL's 152064)
LAYERS, VISION_DEPTH, HIDDEN, VISION_DIM = 2, 2, 32, 32


# ----- the tiny base model, in the hub's file layout -----------------------------------------------------
def byte_vocab() -> dict[str, int]:
    """GPT-2 / Qwen2 byte-level alphabet: every byte one token (no merges), so any text tokenises."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    return {c: i for i, c in enumerate(chars)}


def write_tokenizer(directory: Path) -> dict[str, int]:
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = byte_vocab()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SPECIAL[1:]], special_tokens=True)
    tokenizer._tokenizer.save(str(directory / "tokenizer.json"))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    assert ids == {t: len(vocab) + i for i, t in enumerate(SPECIAL)} and len(tokenizer) == len(vocab) + len(SPECIAL)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "added_tokens_decoder": added, "additional_special_tokens": SPECIAL[1:],
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }))
    return ids


def base_config(ids: dict[str, int]) -> dict:
    """config.json as Qwen/Qwen2-VL-7B-Instruct writes it (flat text fields, transformers 4.4x), in miniature."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": 2 * HIDDEN, "max_position_embeddings": 32768,
        "max_window_layers": LAYERS, "num_attention_heads": 2, "num_hidden_layers": LAYERS,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False,
        "vocab_size": VOCAB_PADDED, "attention_dropout": 0.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"depth": VISION_DEPTH, "embed_dim": VISION_DIM, "mlp_ratio": 2, "num_heads": 2,
                          "in_chans": 3, "hidden_size": HIDDEN, "patch_size": 14, "spatial_merge_size": 2,
                          "spatial_patch_size": 14, "temporal_patch_size": 2},
    }


def legacy_keys(vocab: int) -> dict[str, tuple[int, ...]]:
    """Qwen2VLForConditionalGeneration's state dict under transformers 4.45 (HPSv3's layout), written
    out from that version's module tree: `visual.*`, `model.*` (language model), `lm_head.weight`."""
    d, v, mlp, kv = HIDDEN, VISION_DIM, 2 * VISION_DIM, HIDDEN // 2
    keys = {"visual.patch_embed.proj.weight": (v, 3, 2, 14, 14)}
    for i in range(VISION_DEPTH):
        p = f"visual.blocks.{i}."
        keys |= {p + "norm1.weight": (v,), p + "norm1.bias": (v,), p + "norm2.weight": (v,), p + "norm2.bias": (v,),
                 p + "attn.qkv.weight": (3 * v, v), p + "attn.qkv.bias": (3 * v,), p + "attn.proj.weight": (v, v),
                 p + "attn.proj.bias": (v,), p + "mlp.fc1.weight": (mlp, v), p + "mlp.fc1.bias": (mlp,),
                 p + "mlp.fc2.weight": (v, mlp), p + "mlp.fc2.bias": (v,)}
    keys |= {"visual.merger.ln_q.weight": (v,), "visual.merger.ln_q.bias": (v,),
             "visual.merger.mlp.0.weight": (4 * v, 4 * v), "visual.merger.mlp.0.bias": (4 * v,),
             "visual.merger.mlp.2.weight": (d, 4 * v), "visual.merger.mlp.2.bias": (d,),
             "model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        keys |= {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.q_proj.bias": (d,),
                 p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
                 p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
                 p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (2 * d, d),
                 p + "mlp.up_proj.weight": (2 * d, d), p + "mlp.down_proj.weight": (d, 2 * d),
                 p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    return keys


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight", "ln_q.weight")):
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) * (0.3 if len(shape) > 1 else 0.05)
    return out


def head_tensors(seed: int) -> dict[str, torch.Tensor]:
    """rm_head (ranknet, default sizes): Linear(D, 1024), ReLU, Dropout, Linear(1024, 16), ReLU, Linear(16, 2)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0": (1024, HIDDEN), "3": (16, 1024), "5": (2, 16)}
    out = {}
    for i, (o, n) in shapes.items():
        out[f"rm_head.{i}.weight"] = torch.randn(o, n, generator=g) / n**0.5
        out[f"rm_head.{i}.bias"] = torch.randn(o, generator=g) * 0.1
    return out


def hub_snapshot(cache: Path, repo: str) -> Path:
    """An empty snapshot directory of `repo` in a Hugging Face cache (refs/main -> a fake commit)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def make_world(root: Path) -> dict:
    """HF cache with Qwen/Qwen2-VL-7B-Instruct and MizzenAI/HPSv3 in miniature; the reference backbone dir."""
    from safetensors.torch import save_file

    cache = root / "hf_cache"
    base = hub_snapshot(cache, "Qwen/Qwen2-VL-7B-Instruct")
    ids = write_tokenizer(base)
    config = base_config(ids)
    (base / "config.json").write_text(json.dumps(config))
    (base / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (base / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
    }))
    save_file(random_tensors(legacy_keys(VOCAB_PADDED), seed=1), str(base / "model.safetensors"), {"format": "pt"})
    # HPSv3: the tokenizer gains <|Reward|> (id = old length), the embeddings are resized to the new length,
    # the whole model is fine-tuned (other values than the base's) and saved with the head.
    rows = len(byte_vocab()) + len(SPECIAL) + 1
    state = random_tensors(legacy_keys(rows), seed=2) | head_tensors(seed=3)
    ckpt_dir = hub_snapshot(cache, "MizzenAI/HPSv3")
    save_file(state, str(ckpt_dir / "HPSv3.safetensors"))
    # the same backbone as a transformers model directory, for the independent reference
    ref = root / "reference_backbone"
    ref.mkdir()
    (ref / "config.json").write_text(json.dumps(config | {"vocab_size": rows}))
    save_file(
        {k: v for k, v in state.items() if not k.startswith("rm_head.")},
        str(ref / "model.safetensors"),
        {"format": "pt"},
    )
    return {"cache": cache, "base": base, "checkpoint": ckpt_dir / "HPSv3.safetensors", "state": state,
            "reference": ref, "ids": ids}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("hpsv3"))


SPEC = {"kind": "hpsv3", "base_model": "Qwen/Qwen2-VL-7B-Instruct", "checkpoint_repo": "MizzenAI/HPSv3",
        "checkpoint": "HPSv3.safetensors", "batch_size": 8}  # config/paper.yaml's entry


@pytest.fixture(scope="module")
def reward(world):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(world["cache"]))
        return build_reward(dict(SPEC))


def images(n=2, height=32, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=g) / 255.0  # 8-bit exact


# ----- the reference, recomputed ------------------------------------------------------------------------
def reference_text(prompt: str) -> str:
    from diversegrpo.rewards.hpsv3 import user_text

    text = user_text(prompt)
    if prompt == "a red cat":
        assert hashlib.sha256(text.encode()).hexdigest() == REFERENCE_TEXT_SHA256
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")


def reference_mu_sigma(world, imgs: torch.Tensor, prompts: list[str], size: tuple[int, int]) -> torch.Tensor:
    """HPSv3RewardInferencer.reward's computation: processor on the resized uint8 PIL images and the
    chat text (right padding), Qwen2-VL's language model on sequential positions, head at <|Reward|>."""
    from PIL import Image
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from diversegrpo.rewards.clip_common import to_pil

    processor = AutoProcessor.from_pretrained(str(world["base"]))
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.add_tokens(["<|Reward|>"], special_tokens=True)
    reward_id = processor.tokenizer.convert_tokens_to_ids("<|Reward|>")
    pil = [im.resize((size[1], size[0]), Image.BICUBIC) for im in to_pil(imgs)]
    batch = processor(text=[reference_text(p) for p in prompts], images=pil, padding=True, return_tensors="pt")

    model, info = Qwen2VLForConditionalGeneration.from_pretrained(str(world["reference"]), output_loading_info=True,
                                                                   attn_implementation="sdpa")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    b, length = batch["input_ids"].shape
    with torch.no_grad():
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                             position_ids=torch.arange(length).view(1, 1, -1).expand(3, b, -1)).last_hidden_state
    at = batch["input_ids"] == reward_id
    assert at.sum(1).tolist() == [1] * b
    h, s = hidden[at], world["state"]
    h = F.relu(F.linear(h, s["rm_head.0.weight"], s["rm_head.0.bias"]))
    h = F.relu(F.linear(h, s["rm_head.3.weight"], s["rm_head.3.bias"]))
    return F.linear(h, s["rm_head.5.weight"], s["rm_head.5.bias"])


# ----- tests --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mu_sigma(reward):
    return reward.mu_sigma(images(), PROMPTS)


def test_score_equals_the_reference_computation(world, reward, mu_sigma):
    imgs = images()
    torch.testing.assert_close(mu_sigma, reference_mu_sigma(world, imgs, PROMPTS, (448, 448)), atol=1e-5, rtol=1e-5)
    assert mu_sigma[0, 0] != mu_sigma[1, 0]
    # the score is mu; one image at a time (no padding) changes nothing
    reward.batch_size = 1
    try:
        scores = reward(imgs, PROMPTS)
    finally:
        reward.batch_size = 8
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, mu_sigma[:, 0], atol=1e-5, rtol=1e-5)


def test_non_square_images_follow_the_reference_size(world, reward):
    imgs = images(1, 32, 48, seed=1)
    torch.testing.assert_close(
        reward.mu_sigma(imgs, PROMPTS[:1]),
        reference_mu_sigma(world, imgs, PROMPTS[:1], (392, 560)),
        atol=1e-5,
        rtol=1e-5,
    )


def test_smart_resize_matches_qwen2_vl():
    from diversegrpo.rewards.hpsv3 import smart_resize

    # values from hpsv3 1.0.0's smart_resize with min_pixels = max_pixels = 256 * 28 * 28
    expected = {(32, 32): (448, 448), (32, 48): (392, 560), (512, 512): (448, 448), (1024, 1024): (448, 448),
                (720, 1280): (336, 588), (1000, 300): (812, 224), (16, 16): (448, 448)}
    assert {s: smart_resize(*s) for s in expected} == expected


def test_reference_input_layout(reward):
    """One image of 256 merged patches first, one <|Reward|> per sample, right padding, the chat text."""
    batch = reward.inputs(images(), PROMPTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert batch["image_grid_thw"].tolist() == [[1, 32, 32]] * 2
    assert ((ids == reward.image_id).sum(1) == 256).all() and ((ids == reward.reward_id).sum(1) == 1).all()
    assert mask.all(1).tolist() == [False, True]  # the shorter prompt is padded
    assert all(bool(m[: int(m.sum())].all()) for m in mask)  # padding only on the right
    decoded = reward.processor.tokenizer.decode(ids[0][mask[0].bool()])
    assert decoded.replace("<|image_pad|>" * 256, "<|image_pad|>") == reference_text(PROMPTS[0])


def test_loads_only_the_checkpoint(world, reward):
    """The whole model comes from HPSv3.safetensors (not the base's weights); lm_head is not kept."""
    state = world["state"]
    sd = reward.backbone.state_dict()
    torch.testing.assert_close(sd["language_model.embed_tokens.weight"], state["model.embed_tokens.weight"])
    torch.testing.assert_close(sd["visual.blocks.1.attn.qkv.weight"], state["visual.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(reward.head[5].weight, state["rm_head.5.weight"])
    assert reward.reward_id == state["model.embed_tokens.weight"].shape[0] - 1
    assert not hasattr(reward.backbone, "lm_head")
    assert reward.head[0].weight.dtype == torch.float32 and reward.backbone.dtype == torch.float32  # CPU: fp32


def _write_variant(world, tmp_path, change) -> Path:
    from safetensors.torch import save_file

    state = dict(world["state"])
    change(state)
    path = tmp_path / "HPSv3.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("rm_head.5.bias"), r"missing keys \['rm_head.5.bias'\]"),
        (lambda s: s.pop("lm_head.weight"), r"missing keys \['lm_head.weight'\]"),
        (lambda s: s.pop("visual.merger.mlp.2.weight"), r"missing keys \['visual.merger.mlp.2.weight'\]"),
        (lambda s: s.update({"rm_head.7.weight": torch.zeros(1)}), r"unexpected keys \['rm_head.7.weight'\]"),
        (
            lambda s: s.update({"model.model.norm.weight": s.pop("model.norm.weight")}),
            r"missing keys \['model.norm.weight'\]; unexpected keys \['model.model.norm.weight'\]",
        ),
        (
            lambda s: s.update({"rm_head.3.weight": torch.zeros(8, 1024)}),
            r"rm_head.3.weight: \(8, 1024\) \(expected \(16, 1024\)\)",
        ),
    ],
)
def test_checkpoint_keys_are_all_consumed(world, tmp_path, monkeypatch, change, match):
    from diversegrpo.rewards.hpsv3 import CheckpointMismatch

    monkeypatch.setenv("HF_HUB_CACHE", str(world["cache"]))
    path = _write_variant(world, tmp_path, change)
    with pytest.raises(CheckpointMismatch, match=match):
        build_reward(dict(SPEC, checkpoint=str(path)))


def test_missing_weights_say_what_to_fetch(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotFound) as err:
        build_reward(dict(SPEC))
    message = str(err.value)
    assert "huggingface-cli download MizzenAI/HPSv3 HPSv3.safetensors" in message
    assert ("huggingface-cli download Qwen/Qwen2-VL-7B-Instruct config.json preprocessor_config.json "
            "tokenizer.json tokenizer_config.json") in message
    assert str(tmp_path) in message
    # checkpoint present, base model absent; and a local checkpoint path that does not exist
    monkeypatch.setenv("HF_HUB_CACHE", str(world["cache"]))
    with pytest.raises(ModelNotFound, match="HPSv3 base model .*huggingface-cli download Qwen/Qwen2-VL-2B"):
        build_reward(dict(SPEC, base_model="Qwen/Qwen2-VL-2B-Instruct"))
    with pytest.raises(
        ModelNotFound, match="HPSv3 checkpoint .*huggingface-cli download MizzenAI/HPSv3 nope.safetensors"
    ):
        build_reward(dict(SPEC, checkpoint="nope.safetensors"))


def test_bf16_matches_the_reference_numerics(world, monkeypatch, mu_sigma):
    """bf16 (CUDA's dtype, here on CPU): RoPE buffers cast like the reference's model.to(bf16); the vision
    RoPE computed as transformers 4.45 does in bf16 (outer product and cos in bf16); head in fp32."""
    monkeypatch.setenv("HF_HUB_CACHE", str(world["cache"]))
    low = build_reward(dict(SPEC, dtype="bfloat16"))
    assert low.backbone.dtype == torch.bfloat16 and low.head[0].weight.dtype == torch.float32
    assert low.backbone.language_model.rotary_emb.inv_freq.dtype == torch.bfloat16
    rope = low.backbone.visual.rotary_pos_emb
    positions = torch.tensor([[0, 0], [3, 5], [31, 17]])
    cos, sin = rope(None, positions)
    # transformers 4.45: VisionRotaryEmbedding(seqlen) = outer(arange(seqlen, dtype), inv_freq) in the
    # model dtype, gathered at (h, w), then cos / sin of that bf16 tensor, each half repeated
    inv = rope.rope.inv_freq
    table = torch.outer(torch.arange(32, dtype=inv.dtype), inv)
    angles = table[positions].flatten(1)
    torch.testing.assert_close(cos, angles.cos().repeat(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(sin, angles.sin().repeat(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(low(images(), PROMPTS), mu_sigma[:, 0], atol=0.05, rtol=0.05)  # near fp32


def test_special_tokens_in_prompts_are_refused(reward):
    with pytest.raises(ValueError, match="special token"):
        reward(images(1), ["a cat <|Reward|>"])

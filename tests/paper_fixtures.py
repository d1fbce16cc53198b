"""Tiny random-weight stand-ins for the paper world's models, assembled offline from configs:
SD3 and FLUX pipelines (CLIP + T5 text encoders, VAE, transformer), a CLIP for PickScore/CLIPScore, and
a DreamSim cache in its real on-disk layout. Imported by the tests/test_paper_*.py files."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESOLUTION = 16  # pixels; the tiny VAE halves it once: 8x8 latents, 16 image tokens
WORDS = "a photo of cat dog red blue green painting an the in on with".split()


def write_clip_vocab(directory: Path) -> tuple[Path, Path]:
    """A character-level BPE vocabulary (no merges): every prompt of lowercase letters tokenises."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return vocab, merges


def clip_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_clip_vocab(directory)
    # transformers 5 takes vocab=/merges= (the old vocab_file= keyword is silently ignored).
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)


def clip_text_config(hidden: int = 16, projection: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=80, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def t5_parts(d_model: int = 32):
    """A tiny T5 encoder and a word-level fast tokenizer (no sentencepiece file needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_heads=2, num_layers=1,
                      decoder_start_token_id=0)
    return T5EncoderModel(config), tokenizer


def tiny_vae(latent_channels: int, shift_factor: float = 0.0609, scaling_factor: float = 1.5305):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=RESOLUTION,
        shift_factor=shift_factor, scaling_factor=scaling_factor, use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_sd3_pipeline(tmp: Path, seed: int = 0, t5: bool = False, num_layers: int = 2, heads: int = 2,
                      head_dim: int = 8, sample_size: int = RESOLUTION // 2):
    """StableDiffusion3Pipeline with SD3.5-M's structure in miniature (dual attention in block 0, qk rms norm);
    no T5 unless `t5` (then a tiny T5 whose width is the joint attention dim, as in SD3). The sizes are
    for benchmarks/sampler_vs_pipeline.py, which needs a transformer that dominates the run time."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=32, pos_embed_max_size=max(8, sample_size // 2),
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    text_encoder_3, tokenizer_3 = t5_parts(32) if t5 else (None, None)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(4),
        text_encoder=CLIPTextModelWithProjection(clip_text_config()),
        tokenizer=clip_tokenizer(tmp / "tok1"),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config()),
        tokenizer_2=clip_tokenizer(tmp / "tok2"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def tiny_flux_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1, heads: int = 2,
                       head_dim: int = 16):
    """FluxPipeline in miniature (guidance-distilled, CLIP + T5); head_dim a multiple of 8 (rotary axes)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=True, axes_dims_rope=(head_dim // 4, head_dim // 4, head_dim // 2),
    )
    t5, t5_tokenizer = t5_parts(32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=tiny_vae(4, 0.1159, 0.3611),
        text_encoder=CLIPTextModel(clip_text_config()), tokenizer=clip_tokenizer(tmp / "tok1"),
        text_encoder_2=t5, tokenizer_2=t5_tokenizer,
    )


BACKBONE_SPEC = {"resolution": RESOLUTION, "dtype": "float32", "max_sequence_length": 8,
                 "lora": {"rank": 4, "alpha": 8, "init": "gaussian"}}


def perturb_lora(backbone, scale: float = 0.5, seed: int = 1) -> None:
    """Give every LoRA matrix random values, so that the adapter visibly changes the output (B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def save_tiny_clip(directory: Path, image_size: int = 32) -> tuple[Path, Path]:
    """A random CLIPModel and its processor saved like the hub's (model dir, processor dir)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=16)
    config = CLIPConfig(text_config=clip_text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=16,
                        logit_scale_init_value=2.6592)
    model_dir, processor_dir = directory / "clip_model", directory / "clip_processor"
    CLIPModel(config).save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(directory / "clip_tok")).save_pretrained(
        processor_dir
    )
    return model_dir, processor_dir


def build_dreamsim_cache(cache: Path, seed: int = 0) -> Path:
    """A random-weight DreamSim `open_clip_vitb32` cache in the real layout: the ViT checkpoint
    (state_dict + proj) and the LoRA adapter directory that dreamsim loads with PEFT."""
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cache.mkdir(parents=True, exist_ok=True)
    vit = vit_base(patch_size=32)
    vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)  # dreamsim swaps it in before loading
    state = {**vit.state_dict(), "proj": torch.randn(vit.embed_dim, 512) * 0.05}
    torch.save({"state_dict": state}, cache / "open_clip_vitb32_pretrain.pth.tar")
    model = PerceptualModel(model_type="open_clip_vitb32", feat_type="embedding", stride="32", lora=True,
                            load_dir=str(cache), device="cpu", normalize_embeds=True)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["qkv"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # non-zero, so a loader that dropped the adapter would be caught
    peft_model.save_pretrained(cache / "open_clip_vitb32_single_lora")
    return cache

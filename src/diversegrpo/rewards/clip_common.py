"""CLIP-family scoring shared by PickScore and CLIPScore: the processor's own image preprocessing on
8-bit images, unit-norm image and text embeddings, and an offline loader for a CLIP model + processor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..io import to_uint8
from ..weights import resolve_model


def load_clip(model: str, processor: str, device) -> tuple[torch.nn.Module, object]:
    """A transformers CLIPModel and its processor from local dirs or the HF cache (never downloaded)."""
    from transformers import AutoModel, AutoProcessor

    processor_obj = AutoProcessor.from_pretrained(str(resolve_model(processor)), local_files_only=True)
    model_obj = AutoModel.from_pretrained(str(resolve_model(model)), local_files_only=True)
    return model_obj.to(device).eval().requires_grad_(False), processor_obj


def preprocess(images: torch.Tensor, processor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) CLIP pixel values, as the reference scorers make them
    (PickScore's model card, Flow-GRPO's pickscore_scorer): the images become 8-bit, then the
    processor's own image path runs on them. The uint8 batch is handed over as a tensor, which the
    processor reads exactly as it reads PIL images of the same pixels (tests/test_preprocessing.py).
    A torchvision-backend processor (transformers 5's default) resizes the batch where it lies (on a
    GPU its float bicubic may round a rare pixel one level apart from the CPU's); a PIL/NumPy one
    (transformers 4's slow processor) works image by image on the CPU, as the reference does."""
    ip = processor.image_processor
    x = to_uint8(images)  # (B, 3, H, W) uint8
    if getattr(ip, "backend", None) != "torchvision":
        x = x.cpu()
    pixels = ip(images=x, input_data_format="channels_first", return_tensors="pt").pixel_values
    return pixels.to(images.device)


def image_embeds(model, processor, images: torch.Tensor) -> torch.Tensor:
    """(B, D) unit-norm image embeddings. Goes through vision_model + projection directly: in
    transformers 5 `get_image_features` returns an output object, in 4.x a tensor."""
    device = next(model.parameters()).device
    pixels = preprocess(images.to(device), processor).to(model.dtype)
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return F.normalize(model.visual_projection(pooled).float(), dim=-1)


def text_embeds(model, processor, prompts: list[str]) -> torch.Tensor:
    """(B, D) unit-norm text embeddings (CLIP's 77-token context, truncated)."""
    device = next(model.parameters()).device
    tok = processor.tokenizer(prompts, padding="max_length", truncation=True,
                              max_length=min(77, processor.tokenizer.model_max_length), return_tensors="pt")
    out = model.text_model(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
    return F.normalize(model.text_projection(out.pooler_output).float(), dim=-1)


def batched(fn, images: torch.Tensor, prompts: list[str], batch_size: int) -> torch.Tensor:
    """Score in chunks so that a group of 24 x 1024 px images does not hold all activations at once."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    return torch.cat([fn(images[i : i + batch_size], prompts[i : i + batch_size])
                      for i in range(0, len(prompts), batch_size)])


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> PIL images (for scorers whose own preprocessing wants PIL)."""
    from PIL import Image

    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]

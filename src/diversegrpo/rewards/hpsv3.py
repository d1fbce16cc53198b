"""HPSv3 (Ma et al. 2025): a Qwen2-VL-7B reward model; the score is the predicted mean `mu`.

Runs on this project's own transformers (5.x), re-implementing what the `hpsv3` package (1.0.0, which
pins transformers==4.45.2) computes in `HPSv3RewardInferencer.reward`:

- **Weights.** The reference builds Qwen2-VL from the base model, adds the special token `<|Reward|>` to
  the tokenizer, resizes the token embeddings to the new tokenizer length, and then loads
  HPSv3.safetensors with `load_state_dict(strict=True)`: the checkpoint holds the WHOLE model (vision
  tower, language model, the unused `lm_head`, and the reward head). So everything here is loaded from
  HPSv3.safetensors; from `base_model` (Qwen/Qwen2-VL-7B-Instruct) only the config, tokenizer, image
  processor and chat template are read, never its 16 GB of weights. Keys are transformers-4.45 names
  (`visual.*`, `model.*` for the language model, `lm_head.weight`, `rm_head.{0,3,5}.{weight,bias}`);
  every one must be consumed and none may be missing (an error names the key). `lm_head.weight` is
  shape-checked but not kept: the reward never reads the language-model logits.
- **Head** (`rm_head_type: ranknet`, no `rm_head_kwargs`): Linear(hidden, 1024), ReLU, Dropout(0.05),
  Linear(1024, 16), ReLU, Linear(16, 2) -> (mu, sigma), run in float32 on the float32-cast hidden state
  (the reference keeps `rm_head` in fp32 and runs it under an fp32 autocast).
- **Input.** One user turn, through the base model's chat template: the image first, then the text
  `INSTRUCTION` (with the prompt) + `"\\nPlease provide the overall ratings of this image: <|Reward|>\\n\\nEND\\n"`,
  with the generation prompt. The image is a uint8 RGB PIL image resized (bicubic, PIL) to Qwen2-VL's
  `smart_resize` with min_pixels = max_pixels = 256 * 28 * 28 (448 x 448 for a square image), then the
  processor's rescale / normalise / patchify. Batches are right-padded.
- **Forward.** Token embeddings with the vision tower's merged patch embeddings scattered into the
  `<|image_pad|>` slots, then the language model with PLAIN sequential positions 0..L-1 on all three
  M-RoPE axes (the reference calls the inner language model directly with `position_ids=None`, which
  skips Qwen2-VL's 3-D image positions), then the final-norm hidden state at the `<|Reward|>` token.
- **Dtype.** bf16 on CUDA, fp32 on CPU. In bf16 the reference casts the whole model with
  `.to(torch.bfloat16)`, RoPE buffers included, and its 4.45 vision RoPE computes angles and cos/sin in
  that dtype; both are reproduced (the model was trained that way).

Spec keys (config/paper.yaml): `base_model`, `checkpoint_repo`, `checkpoint` (a file name in that repo,
or a local file), `batch_size`, and optionally `dtype` (default: bfloat16 on CUDA, float32 elsewhere).
Weights are never downloaded: they come from the HF cache or local paths; a missing one is a
ModelNotFound naming the `huggingface-cli download` command for each.

Checked against hpsv3 1.0.0's own `HPSv3RewardInferencer` on transformers 4.45.2 (tiny random model of
tests/test_hpsv3.py, CPU): (mu, sigma) agree within 1e-6 in fp32 and 2e-7 in bf16. One difference in
bf16: the reference's vision tower on SDPA (no flash-attn) attends over all images of a batch at once
with a block mask, so an image's score shifts slightly with its batch neighbours when image sizes
differ; here each image is encoded alone, which equals the reference's score for it scored alone.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from ..weights import HPSV3_BASE, HPSV3_BASE_FILES, HPSV3_CHECKPOINT, ModelNotFound, resolve_model
from .clip_common import batched, to_pil

REWARD_TOKEN = "<|Reward|>"
PIXELS = 256 * 28 * 28  # the reference's min_pixels and max_pixels alike
# The text the reward model was trained with (hpsv3/dataset/data_collator_qwen.py, verbatim; trailing
# spaces included), followed by the rating request that carries the reward token.
INSTRUCTION = "\n".join([
    "",
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
    "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
    "worst and 10 being the best. ",
    "",
    "**Visual Quality:**  ",
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:",
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.",
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.",
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).",
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense "
    "of harmony and balance.",
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, "
    "or adult material. If such content is present, the image quality and satisfaction score should be the "
    "lowest possible. ",
    "",
    "**Text Alignment:**  ",
    "Assess how well the image matches the textual prompt across the following sub-dimensions:",
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
    "align with the textual description. The subject should match the description in terms of number, "
    "appearance, and behavior.",
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well "
    "the image adheres to this style.",
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the "
    "image logically fit the scenario described in the prompt. The environment should support and enhance the "
    "subject without contradictions.",
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.",
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in "
    "the image. The generated content should not introduce elements that conflict with or distort the original "
    "description.",
    "Textual prompt - {prompt}",
    "",
    "",
    "",
])
RATING_REQUEST = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


class CheckpointMismatch(ValueError):
    """HPSv3.safetensors does not have the reference model's keys or shapes."""


def user_text(prompt: str) -> str:
    return INSTRUCTION.replace("{prompt}", prompt) + RATING_REQUEST


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = PIXELS,
                 max_pixels: int = PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size: both sides multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as far as possible."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"HPSv3 (Qwen2-VL) takes aspect ratios up to 200, got {height} x {width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def reference_images(images: torch.Tensor, factor: int = 28) -> list:
    """(B, 3, H, W) in [0, 1] -> uint8 RGB PIL images at the reference's size (PIL bicubic)."""
    from PIL import Image

    out = []
    for pil in to_pil(images):
        h, w = smart_resize(pil.height, pil.width, factor)
        out.append(pil.resize((w, h), Image.BICUBIC))
    return out


def build_head(hidden: int) -> nn.Sequential:
    """rm_head, `ranknet` without rm_head_kwargs: its Linear layers are Sequential items 0, 3 and 5."""
    return nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05),
                         nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2))


def checkpoint_path(spec: dict) -> str:
    """The HPSv3 checkpoint file: `checkpoint` as a local file, else inside `checkpoint_repo` (cache)."""
    name = spec.get("checkpoint", "HPSv3.safetensors")
    if os.path.isfile(os.path.expanduser(name)):
        return os.path.expanduser(name)
    repo = spec.get("checkpoint_repo") or HPSV3_CHECKPOINT
    return str(resolve_model(repo, [name]) / name)


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def backbone_targets(backbone) -> dict[str, torch.Tensor]:
    """HPSv3.safetensors key (transformers 4.45 layout) -> the backbone tensor it fills."""
    targets = {}
    for name, tensor in backbone.visual.state_dict(keep_vars=True).items():
        targets[f"visual.{name}"] = tensor
    for name, tensor in backbone.language_model.state_dict(keep_vars=True).items():
        targets[f"model.{name}"] = tensor
    return targets


def build_backbone(config, device, dtype: torch.dtype):
    """Qwen2VLModel (vision tower + language model) with uninitialised weights, on `device`, in `dtype`
    (buffers too, as the reference's `model.to(bf16)` does)."""
    import transformers
    from transformers import Qwen2VLModel
    from transformers.initialization import no_init_weights

    if int(transformers.__version__.split(".")[0]) < 5:  # module layout and vision-RoPE API of transformers 5
        raise ImportError("the HPSv3 reward needs transformers >= 5 (constraints.txt pins it); "
                          f"found {transformers.__version__}")
    with torch.device(device), no_init_weights():
        model = Qwen2VLModel._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.to(device=device, dtype=dtype)
    if dtype != torch.float32:
        model.visual.rotary_pos_emb = ReferenceVisionRope(model.visual.rotary_pos_emb)
    return model.eval().requires_grad_(False)


class ReferenceVisionRope(nn.Module):
    """The vision RoPE as transformers 4.45 computes it once the model is cast to a low-precision dtype:
    angle = position * inv_freq rounded to that dtype, cos / sin evaluated in it (transformers 5 does
    both in fp32). Wraps transformers 5's module for its `inv_freq` and its layout of the frequencies."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope

    def forward(self, x, position_ids):
        inv_freq = self.rope.inv_freq
        angle = position_ids[..., None].to(inv_freq.dtype) * inv_freq
        scale = getattr(self.rope, "attention_scaling", 1.0)
        layout = self.rope.recomposition_frequencies
        return layout(angle.cos() * scale), layout(angle.sin() * scale)


def load_checkpoint(path: str, backbone, head: nn.Module) -> None:
    """Fill the backbone and the head from HPSv3.safetensors; every key of the reference's state dict
    must be there with its shape, and nothing else."""
    from safetensors import safe_open

    targets = backbone_targets(backbone)
    targets.update({f"rm_head.{name}": t for name, t in head.state_dict(keep_vars=True).items()})
    text = backbone.config.text_config
    unused = {"lm_head.weight": (text.vocab_size, text.hidden_size)}  # the reference's LM head; never read
    shapes = checkpoint_shapes(path)
    missing = sorted((set(targets) | set(unused)) - set(shapes))
    unexpected = sorted(set(shapes) - set(targets) - set(unused))
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{path} is not an HPSv3 checkpoint for this base model: "
            + "; ".join(part for part in (f"missing keys {missing}" if missing else "",
                                          f"unexpected keys {unexpected}" if unexpected else "") if part)
        )
    expected = {k: tuple(t.shape) for k, t in targets.items()} | unused
    wrong = [f"{k}: {shapes[k]} (expected {expected[k]})" for k in sorted(expected) if shapes[k] != expected[k]]
    if wrong:
        raise CheckpointMismatch(f"{path}: wrong shapes for {wrong}")
    with torch.no_grad(), safe_open(path, framework="pt", device="cpu") as f:
        for key, target in targets.items():
            target.copy_(f.get_tensor(key))


def load_processor(base: str):
    """The base model's processor (tokenizer, image processor, chat template) with `<|Reward|>` added."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base, local_files_only=True)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    if REWARD_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(REWARD_TOKEN, special=True)], special_tokens=True)
    if processor.chat_template is None:  # older snapshots keep it in tokenizer_config.json only
        processor.chat_template = getattr(tokenizer, "chat_template", None)
    if processor.chat_template is None:
        raise ModelNotFound(f"the HPSv3 base model {base} has no chat template (chat_template.json or "
                            "tokenizer_config.json's chat_template)")
    return processor


class HPSv3:
    def __init__(self, backbone, head: nn.Module, processor, batch_size: int = 8):
        self.backbone, self.head, self.processor = backbone, head, processor
        self.batch_size = int(batch_size)
        tokenizer = processor.tokenizer
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.image_id = backbone.config.image_token_id
        rows = backbone.language_model.embed_tokens.weight.shape[0]
        if self.reward_id != rows - 1:  # the reference resized the embeddings to the tokenizer + <|Reward|>
            raise CheckpointMismatch(
                f"{REWARD_TOKEN} got id {self.reward_id} but the checkpoint has {rows} token embeddings "
                f"(expected the reward token to be the last, id {rows - 1}): tokenizer and checkpoint disagree"
            )
        image_pad = tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<|image_pad|>"))
        if image_pad != self.image_id:
            raise CheckpointMismatch(f"the tokenizer's image token is {image_pad}, the config's {self.image_id}")
        ip = processor.image_processor
        self.factor = ip.patch_size * ip.merge_size

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "HPSv3":
        base_location = spec.get("base_model") or HPSV3_BASE
        problems, ckpt, base = [], None, None
        try:
            ckpt = checkpoint_path(spec)
        except ModelNotFound as err:
            problems.append(f"HPSv3 checkpoint (`checkpoint_repo` / `checkpoint`): {err}")
        try:
            base = resolve_model(base_location, HPSV3_BASE_FILES)
        except ModelNotFound as err:
            problems.append(f"HPSv3 base model (`base_model`; only its config, tokenizer and processor files "
                            f"are read, the weights come from the checkpoint): {err}")
        if problems:
            raise ModelNotFound("; ".join(problems))
        device = torch.device(device)
        dtype = spec.get("dtype") or ("bfloat16" if device.type == "cuda" else "float32")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(base), local_files_only=True)
        shapes = checkpoint_shapes(ckpt)
        if "model.embed_tokens.weight" not in shapes:
            raise CheckpointMismatch(f"{ckpt} is not an HPSv3 checkpoint: missing keys ['model.embed_tokens.weight']")
        config.text_config.vocab_size = shapes["model.embed_tokens.weight"][0]
        backbone = build_backbone(config, device, dtype)
        head = build_head(config.text_config.hidden_size).to(device=device, dtype=torch.float32)
        head.eval().requires_grad_(False)
        load_checkpoint(ckpt, backbone, head)
        return cls(backbone, head, load_processor(str(base)), spec.get("batch_size", 8))

    def inputs(self, images: torch.Tensor, prompts: list[str]):
        """The reference's batch: chat-templated text, PIL images at its size, right padding."""
        for p in prompts:
            if REWARD_TOKEN in p or self.processor.image_token in p:
                raise ValueError(f"prompt contains a special token of the reward model: {p!r}")
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(p)}]}]
                         for p in prompts]
        texts = self.processor.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        return self.processor(text=texts, images=reference_images(images, self.factor), padding=True,
                              return_tensors="pt", do_resize=False)

    @torch.no_grad()
    def hidden_states(self, batch) -> torch.Tensor:
        """(B, L, D) final-norm hidden states of the language model, reference positions."""
        device, dtype = self.backbone.language_model.embed_tokens.weight.device, self.backbone.dtype
        ids = batch["input_ids"].to(device)
        embeds = self.backbone.language_model.embed_tokens(ids)
        vision = self.backbone.visual(batch["pixel_values"].to(device, dtype),
                                      grid_thw=batch["image_grid_thw"].to(device))
        vision = getattr(vision, "pooler_output", vision)  # transformers 5: an output object
        slots = ids == self.image_id
        if int(slots.sum()) != vision.shape[0]:
            raise ValueError(f"{int(slots.sum())} image tokens but {vision.shape[0]} image embeddings")
        embeds = embeds.masked_scatter(slots[..., None].expand_as(embeds), vision.to(embeds.dtype))
        b, length = ids.shape
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, b, -1)
        out = self.backbone.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device),
                                           position_ids=positions, use_cache=False)
        return out.last_hidden_state

    @torch.no_grad()
    def mu_sigma(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, 2): the head's output at the `<|Reward|>` token, as the reference's `reward()` returns."""
        batch = self.inputs(images, prompts)
        hidden = self.hidden_states(batch)
        at = batch["input_ids"].to(hidden.device) == self.reward_id
        if not bool((at.sum(1) == 1).all()):
            raise ValueError(f"expected one {REWARD_TOKEN} per sample, got {at.sum(1).tolist()}")
        return self.head(hidden[at].float())

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.mu_sigma(images, prompts)[:, 0]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return batched(self._score, images, prompts, self.batch_size).cpu()

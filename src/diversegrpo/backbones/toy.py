"""The embedded default's backbone: diffusers' own SD3 MMDiT, tiny, in pixel space, with a text
encoder of the project's own (one learned vector per word of its synthetic world's vocabulary)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import reading, save_safetensors, write_json
from ..registry import build_world
from ..worlds import World
from .base import Backbone, Conditioning

NULL = "<null>"  # the word of the empty prompt (classifier-free guidance), id 0
WEIGHTS, CONFIG = "model.safetensors", "config.json"
# The toy's own choice, deliberately not derived from sd3.LORA_TARGETS: the attention projections of
# the joint blocks, by bare name. The toy has no second attention (`attn2`), so these adapt the same
# modules as SD3's `attn.`-prefixed list would; the names are kept because they are written into every
# saved adapter's metadata (changing them would change the default run's LoRA bytes).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@dataclass
class ToyConfig:
    world: str = "toy"  # the synthetic world it learns (registry.WORLDS): its vocabulary and image size
    image_size: int = 16
    # 8 x 8 patches: 4 tokens, each with a quarter of the shape and a share of the background. The width
    # must exceed a patch's 8 * 8 * 3 = 192 values, or the noise part of the velocity cannot pass through.
    patch_size: int = 8
    num_layers: int = 3
    num_attention_heads: int = 4
    attention_head_dim: int = 64
    text_dim: int = 32
    shift: float = 1.0

    def transformer_kwargs(self) -> dict:
        return dict(
            sample_size=self.image_size,
            patch_size=self.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=self.num_layers,
            attention_head_dim=self.attention_head_dim,
            num_attention_heads=self.num_attention_heads,
            joint_attention_dim=self.text_dim,
            caption_projection_dim=self.num_attention_heads * self.attention_head_dim,
            pooled_projection_dim=self.text_dim,
            pos_embed_max_size=self.image_size // self.patch_size,
        )


class ToyTextEncoder(nn.Module):
    """prompt -> its world's words (toy world: colour, shape) -> (B, L, D) states and a (B, D) pooled vector."""

    def __init__(self, dim: int, world: World):
        super().__init__()
        self.world = world
        self.vocabulary = [NULL, *world.vocabulary()]
        self.length = len(world.words(world.captions()[0]))  # L: every caption has as many words
        self.token = nn.Embedding(len(self.vocabulary), dim)
        self.position = nn.Parameter(torch.zeros(self.length, dim))
        self.pool = nn.Linear(dim, dim)

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        ids = [[0] * self.length if p == "" else [self.vocabulary.index(w) for w in self.world.words(p)]
               for p in prompts]
        return torch.tensor(ids, dtype=torch.long, device=self.position.device)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.token(ids) + self.position  # (B, L, D)
        return states, self.pool(states.mean(dim=1))


class ToyBackbone(Backbone):
    """Pixel-space tiny MMDiT: latents are images scaled to [-1, 1]."""

    lora_targets = LORA_TARGETS

    def __init__(self, config: ToyConfig | None = None, device: str | torch.device = "cpu"):
        # The LoRA writer is SD3LoraLoaderMixin, the class that defines StableDiffusion3Pipeline's
        # save_lora_weights (the very same function: same file bytes). Importing the model has already
        # loaded it, whereas importing the pipeline loads diffusers.pipelines and transformers' CLIP / T5
        # models, 0.15-0.5 s per job that no toy job uses (benchmarks/job_overhead.py; kept out by
        # tests/test_imports.py).
        from diffusers import SD3Transformer2DModel
        from diffusers.loaders.lora_pipeline import SD3LoraLoaderMixin

        self.config = config or ToyConfig()
        self.device = torch.device(device)
        self.transformer = SD3Transformer2DModel(**self.config.transformer_kwargs()).to(self.device)
        self.text_encoder = ToyTextEncoder(self.config.text_dim, build_world(self.config.world)).to(self.device)
        self.latent_shape = (3, self.config.image_size, self.config.image_size)
        self.shift = self.config.shift
        self.lora_pipeline_class = SD3LoraLoaderMixin

    # ----- the adapter interface -------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        with torch.no_grad():
            embeds, pooled = self.text_encoder(self.text_encoder.token_ids(prompts))
            neg_embeds, neg_pooled = self.text_encoder(self.text_encoder.token_ids([""] * len(prompts)))
        return Conditioning(embeds, pooled, neg_embeds, neg_pooled)

    def predict(self, x, sigma, embeds, pooled):
        return self.transformer(
            hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma * 1000
        ).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1)

    @staticmethod
    def encode_images(images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> latents in [-1, 1] (the inverse of decode)."""
        return images * 2 - 1

    # ----- weights ---------------------------------------------------------------------------
    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"transformer": self.transformer, "text": self.text_encoder})

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> None:
        directory = Path(directory)
        state = self.trainable_modules().state_dict()
        # Weights first: a kill between the two writes never pairs a new config with old weights.
        save_safetensors(state, directory / WEIGHTS, metadata={k: str(v) for k, v in (metadata or {}).items()})
        write_json(asdict(self.config), directory / CONFIG)

    @classmethod
    def from_spec(cls, spec: dict, device: str | torch.device = "cpu") -> "ToyBackbone":
        """The pre-trained toy model; the workflow puts its directory in spec["path"]."""
        return cls.load(spec["path"], device=device)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "ToyBackbone":
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (directory / name).exists():
                raise FileNotFoundError(
                    f"toy backbone file {directory / name} is missing: run the pipeline's backbone stage "
                    f"(snakemake {directory / WEIGHTS}) to pre-train it"
                )
        with reading("toy backbone config", directory / CONFIG, "backbone"):
            backbone = cls(ToyConfig(**json.loads((directory / CONFIG).read_text())), device=device)
        with reading("toy backbone weights", directory / WEIGHTS, "backbone"):
            backbone.trainable_modules().load_state_dict(load_file(str(directory / WEIGHTS), device=str(device)))
        backbone.transformer.eval()
        backbone.text_encoder.eval().requires_grad_(False)
        return backbone

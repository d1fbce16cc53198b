"""UnifiedReward (Wang et al. 2025) as an evaluation metric, served by any OpenAI-compatible endpoint
(e.g. `vllm serve CodeGoat24/UnifiedReward-qwen-7b`). Evaluation only: one HTTP request per image is
far too slow for a training reward. With no endpoint configured it refuses to build, saying so."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.request

import torch

from .clip_common import to_pil

TEMPLATE = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns "
    "with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes "
    "as described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, "
    "including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n"
    "Based on the above criteria, assign a score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)
SCORE = re.compile(r"Final Score:\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)


class EndpointNotConfigured(RuntimeError):
    """UnifiedReward needs `endpoint` (and `model`) in its config entry."""


def parse_score(text: str) -> float:
    """The number after the last 'Final Score:'; NaN when the model answered without one."""
    found = SCORE.findall(text)
    return float(found[-1]) if found else float("nan")


class UnifiedReward:
    def __init__(self, endpoint: str, model: str, api_key: str | None = None, template: str = TEMPLATE,
                 timeout: float = 120.0, max_tokens: int = 512):
        self.url = endpoint.rstrip("/") + (
            "" if endpoint.rstrip("/").endswith("/chat/completions") else "/chat/completions"
        )
        self.model, self.api_key, self.template = model, api_key, template
        self.timeout, self.max_tokens = float(timeout), int(max_tokens)

    @classmethod
    def from_spec(cls, spec: dict, device="cpu") -> "UnifiedReward":
        endpoint = spec.get("endpoint") or os.environ.get("UNIFIEDREWARD_ENDPOINT")
        if not endpoint or not spec.get("model"):
            raise EndpointNotConfigured(
                "UnifiedReward is scored by an OpenAI-compatible server: set `endpoint` (e.g. "
                "http://localhost:8000/v1) and `model` (e.g. CodeGoat24/UnifiedReward-qwen-7b) in its rewards "
                "entry, or leave unifiedreward out of the evaluation rewards"
            )
        key = os.environ.get(spec["api_key_env"]) if spec.get("api_key_env") else None
        return cls(endpoint, spec["model"], key, spec.get("template", TEMPLATE), spec.get("timeout", 120.0))

    def _ask(self, image_png: bytes, prompt: str) -> str:
        data_url = "data:image/png;base64," + base64.b64encode(image_png).decode()
        body = {
            "model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": self.template.format(prompt=prompt)},
            ]}],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        scores = []
        for image, prompt in zip(to_pil(images), prompts):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            scores.append(parse_score(self._ask(buffer.getvalue(), prompt)))
        return torch.tensor(scores, dtype=torch.float32)  # (B,) NaN where no score was given

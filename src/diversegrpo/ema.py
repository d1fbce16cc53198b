"""An exponential moving average of the trained (LoRA) weights, as Flow-GRPO keeps one.

Flow-GRPO updates it every 8 optimizer steps with decay min((1 + n) / (10 + n), 0.9) at optimizer step n (the
warm-up lets the first updates follow the weights closely), and evaluates and saves the average instead of
the raw weights. The state (the averaged tensors and the step count) goes into the run's checkpoint, so a
resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class EmaSettings:
    """train.ema (config/config.yaml; Flow-GRPO's: decay 0.9, every 8)."""

    decay: float  # the average's decay once warmed up
    every: int  # optimizer steps between updates


def ema_decay(step: int, decay: float) -> float:
    """The decay at (1-based) optimizer step `step`: warm-up (1 + n) / (10 + n), capped at `decay`."""
    return min((1 + step) / (10 + step), decay)


class EMA:
    def __init__(self, parameters: list[torch.nn.Parameter], settings: EmaSettings):
        self.settings = settings
        self.shadow = [p.detach().clone() for p in parameters]  # on the parameters' device and dtype
        self.step = 0  # optimizer steps seen

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter]) -> None:
        """Call after every optimizer step; averages every `settings.every` steps."""
        self.step += 1
        if (self.step + 1) % self.settings.every:
            return
        weight = 1 - ema_decay(self.step, self.settings.decay)
        for shadow, p in zip(self.shadow, parameters, strict=True):
            shadow.lerp_(p.detach(), weight)  # shadow += weight (p - shadow)

    @contextlib.contextmanager
    def swapped_in(self, parameters: list[torch.nn.Parameter]) -> Iterator[None]:
        """The averaged weights in place of the trained ones (evaluation, saving); restored on exit."""
        kept = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for shadow, p in zip(self.shadow, parameters, strict=True):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in zip(kept, parameters, strict=True):
                    p.copy_(k)

    def state_dict(self) -> dict:
        return {"step": self.step, "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, the model's LoRA {len(self.shadow)}")
        self.step = int(state["step"])
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved)

"""DiverseGRPO: GRPO fine-tuning of flow-matching text-to-image models that keeps their diversity."""

__version__ = "0.1.0"

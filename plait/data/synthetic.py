"""Seeded synthetic data, generated per step (nothing to download, any size)."""

from __future__ import annotations

import torch

from plait.config import Config
from plait.data.base import Batch, StepData, generator
from plait.registry import register_data


class SyntheticVectors(StepData):
    """Gaussian inputs and uniform labels: the seed's BigModel trains on exactly this."""

    splits = ("train", "eval")

    def __init__(self, seed: int, in_features: int, num_classes: int):
        super().__init__(seed)
        self.in_features, self.num_classes = in_features, num_classes

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        g = generator(self.seed, f"synthetic-{split}-{step}")
        x = torch.randn(global_batch, self.in_features, generator=g)
        y = torch.randint(0, self.num_classes, (global_batch,), generator=g)
        return {"input": x[lo:hi], "target": y[lo:hi]}


class SyntheticTokens(StepData):
    """Arithmetic token sequences t_i = (a + i*d) mod V with random a and d in 1..4: random
    enough to need attention and position, regular enough that the loss visibly falls."""

    task = "lm"
    splits = ("train", "eval")

    def __init__(self, seed: int, vocab_size: int, seq_len: int):
        super().__init__(seed)
        self.vocab_size, self.seq_len = vocab_size, seq_len

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        g = generator(self.seed, f"synthetic-{split}-{step}")
        start = torch.randint(0, self.vocab_size, (global_batch, 1), generator=g)
        stride = torch.randint(1, 5, (global_batch, 1), generator=g)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab_size  # (B, T+1)
        seq = seq[lo:hi]
        return {"input": seq[:, :-1], "target": seq[:, 1:]}


@register_data("synthetic", tasks=("lm", "classification"))
def build_synthetic(cfg: Config, model) -> StepData:
    """Shaped to the model: its vocabulary, or its input width and classes."""
    if model.task == "lm":
        return SyntheticTokens(cfg.train.seed, model.vocab_size, cfg.data.seq_len)
    return SyntheticVectors(cfg.train.seed, model.in_features, model.num_classes)

"""Offline datasets addressed by (split, step, slice): see :mod:`plait.data.base`."""

from __future__ import annotations

from plait.config import Config
from plait.data.base import Batch, StepData
from plait.data.images import Digits, MnistIdx, read_idx
from plait.data.synthetic import SyntheticTokens, SyntheticVectors
from plait.data.text import ByteText, read_corpus

__all__ = ["Batch", "StepData", "build_data", "read_idx", "read_corpus"]


def build_data(cfg: Config, model) -> StepData:
    d, seed = cfg.data, cfg.train.seed
    if d.name == "synthetic":
        if model.task == "lm":
            return SyntheticTokens(seed, model.vocab_size, d.seq_len)
        return SyntheticVectors(seed, model.in_features, model.num_classes)
    if d.name == "stdlib_text":
        return ByteText(seed, d.seq_len, d.eval_fraction, d.path, d.max_bytes)
    if d.name == "tokens":  # prepared token folders / raw .bin files (plait.data.tokens)
        from plait.data.tokens import TokenData

        return TokenData(seed, d)
    if d.name == "digits":
        return Digits(seed, d.eval_fraction)
    return MnistIdx(seed, d.path, d.eval_fraction)

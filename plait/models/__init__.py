"""Model zoo: ``build_model(cfg)`` returns a :class:`PlaitModel` (on the meta device by default)."""

from __future__ import annotations

import dataclasses

import torch

from plait.config import Config
from plait.errors import ConfigError, did_you_mean
from plait.models.base import PlaitModel, name_seed, param_count
from plait.models.gpt import GPT, PRESETS, GPTArgs
from plait.models.mlp import MLP, SEED_BIGMODEL_SIZES, SEED_MLP_SIZES

__all__ = ["PlaitModel", "build_model", "gpt_args", "check_model", "name_seed", "param_count"]


def gpt_args(cfg: Config) -> GPTArgs:
    m = cfg.model
    if m.preset not in PRESETS:
        raise ConfigError(
            f"model.preset: {m.preset!r} is not a gpt preset{did_you_mean(m.preset, PRESETS)}; "
            f"allowed: {', '.join(PRESETS)}"
        )
    shape = dict(PRESETS[m.preset])
    for k in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size"):
        if getattr(m, k) is not None:
            shape[k] = getattr(m, k)
    if m.vocab_size == "auto":  # the token data's vocabulary, from its meta.json
        from plait.data.tokens import auto_vocab_size

        shape["vocab_size"] = auto_vocab_size(cfg.data)
    if m.n_kv_heads is not None:
        shape["n_kv_heads"] = m.n_kv_heads
    elif m.n_heads is not None:
        shape["n_kv_heads"] = m.n_heads
    return GPTArgs(
        **shape,
        max_seq_len=m.max_seq_len or cfg.data.seq_len,
        rope_theta=m.rope_theta,
        norm_eps=m.norm_eps,
        dropout=m.dropout,
    )


def check_model(cfg: Config) -> None:
    """Shape checks that need the model's size but no process group."""
    m, d = cfg.model, cfg.data
    if m.name == "hf":
        from plait.models.hf import check_hf

        check_hf(cfg)
    elif m.name == "gpt":
        a = gpt_args(cfg)
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
            if getattr(a, k) < 1:
                raise ConfigError(f"model.{k}: {getattr(a, k)} is not allowed; must be >= 1")
        if a.dim % a.n_heads:
            raise ConfigError(
                f"model.n_heads: {a.n_heads} does not divide model.dim={a.dim}; pick n_heads among {_divisors(a.dim)}"
            )
        if a.head_dim % 2:
            raise ConfigError(f"model.dim / model.n_heads = {a.head_dim} must be even for RoPE")
        if a.n_heads % a.n_kv_heads:
            raise ConfigError(
                f"model.n_kv_heads: {a.n_kv_heads} does not divide model.n_heads={a.n_heads}; pick among {_divisors(a.n_heads)}"
            )
        if d.name == "stdlib_text" and a.vocab_size < 256:
            raise ConfigError(
                f"model.vocab_size: {a.vocab_size} is too small for byte-level data.name=stdlib_text; needs >= 256"
            )
        if d.name == "tokens":
            from plait.data.tokens import check_vocab

            check_vocab(a.vocab_size, d)
        if a.max_seq_len < d.seq_len:
            raise ConfigError(
                f"model.max_seq_len: {a.max_seq_len} is shorter than data.seq_len={d.seq_len}"
            )
    else:
        if m.preset not in ("tiny", "default"):
            raise ConfigError(
                f"model.preset: {m.preset!r} is not allowed for {m.name}; it has one size ('default')"
            )
        if d.name in ("digits", "mnist_idx") and m.name != "seed_mlp":
            raise ConfigError(
                f"data.name: {d.name!r} gives 784-pixel images, which only model.name=seed_mlp takes; use data.name=synthetic for {m.name}"
            )


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def build_model(cfg: Config, device: str | torch.device = "meta") -> PlaitModel:
    """Build the configured model on ``device``; on meta it holds no memory until materialised."""
    check_model(cfg)
    m = cfg.model
    if m.name == "hf":  # parameters built on meta, derived buffers computed on CPU
        from plait.models.hf import build_hf

        model = build_hf(cfg)
        if torch.device(device).type != "meta":
            model.to_empty(device=device)
            model.init_buffers()
        return model
    with torch.device(device):
        if m.name == "gpt":
            return GPT(gpt_args(cfg))
        sizes = SEED_MLP_SIZES if m.name == "seed_mlp" else SEED_BIGMODEL_SIZES
        return MLP(sizes, batchnorm=m.batchnorm, dropout=m.dropout)


def model_summary(cfg: Config) -> dict:
    """Size facts for planning and logging, computed on meta (no memory)."""
    model = build_model(cfg)
    out = {"params": param_count(model), "n_layers": len(model.layers)}
    if cfg.model.name == "gpt":
        out.update(dataclasses.asdict(gpt_args(cfg)))
    return out

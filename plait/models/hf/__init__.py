"""Hugging Face Transformers causal LMs under plait's model interface (``model.name: hf``).

The config comes from a local ``config.json`` (``model.hf_config``), a ``save_pretrained``
folder (``model.hf_pretrained``) or the class defaults, plus ``model.hf_overrides``; nothing is
ever downloaded. Three adapters give such a model ``layers``, ``tp_plan`` and per-name init:

- :class:`HFDecoder` (Llama / Mistral): HF's own decoder-layer modules, re-parented so a
  parameter's name is HF's minus the ``model.`` prefix (``layers.3.self_attn.q_proj.weight``);
  the forward chain (embed -> layers -> norm -> head) is written here, passing each layer the
  rotary tables and the causal mask it needs.
- :class:`HFGPT2` (GPT-2): GPT-2's fused ``Conv1D`` q/k/v cannot be
  column-sharded by heads, so the blocks are rebuilt from ``nn.Linear`` with separate q/k/v;
  the export mapping re-fuses and transposes them into HF's layout.
- :class:`HFWhole`: any other ``*ForCausalLM``: the whole HF model is one block, no tp plan;
  it trains under data parallel, and tp / pp > 1 are refused in :func:`check_hf`.

Tied embeddings (GPT-2, some Llamas): plait trains the output head as its own parameter that
*starts* equal to the input embedding (same per-name seed, or the same pretrained tensor).
A pipeline puts embedding and head on different stages and tensor parallel re-creates both
parameters, so a tie would not survive either; untying keeps every layout on one trajectory.
Exports say ``tie_word_embeddings: false``, so Transformers loads exactly what was trained.

Files: ``config.py`` (class and config from ``model.hf_*``), ``weights.py`` (pretrained
safetensors), ``base.py`` (what the adapters share), one file per adapter (``decoder.py``,
``gpt2.py``, ``whole.py``), ``export.py`` (back to a ``save_pretrained`` folder). Transformers
and accelerate are optional, heavy dependencies (``plait[hf]``): imported inside the functions
that need them, so importing this package (which registers ``model.name=hf``) costs neither.
"""

from __future__ import annotations

import torch

from plait.config import Config
from plait.errors import ConfigError
from plait.models.hf.base import HFModel
from plait.models.hf.config import GPT2_STYLE, LLAMA_STYLE, SUPPORTED, hf_config
from plait.models.hf.decoder import HFDecoder
from plait.models.hf.gpt2 import HFGPT2
from plait.models.hf.whole import HFWhole
from plait.registry import data_vocab_size, register_model

__all__ = ["HFModel", "build_hf", "check_hf", "hf_config"]


def build_hf(cfg: Config) -> HFModel:
    """The adapter for ``cfg.model`` (parameters on meta, buffers computed)."""
    cls, config = hf_config(cfg.model)
    arch = cls.__name__
    adapter = HFDecoder if arch in LLAMA_STYLE else HFGPT2 if arch in GPT2_STYLE else HFWhole
    return adapter(cls, config, cfg.model.hf_pretrained)


def check_hf(cfg: Config) -> None:
    """Shape and layout checks for ``model.name: hf`` that need no process group."""
    m, d, p = cfg.model, cfg.data, cfg.parallel
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len"):
        if getattr(m, k) is not None:
            raise ConfigError(
                f"model.{k}: {getattr(m, k)!r} is a gpt key; for model.name=hf set the "
                "Transformers config field instead, e.g. model.hf_overrides.hidden_size=64"
            )
    if m.dropout:
        raise ConfigError(
            f"model.dropout: {m.dropout} is a zoo-model key; for model.name=hf set the "
            "Transformers config's own dropout fields through model.hf_overrides"
        )
    cls, config = hf_config(m)
    arch = cls.__name__
    if arch not in SUPPORTED and (p.tp > 1 or p.pp > 1):
        raise ConfigError(
            f"parallel.tp={p.tp}, parallel.pp={p.pp}: not allowed for model.hf_arch={arch}: plait "
            f"knows the layers and tensor-parallel plan of {', '.join(SUPPORTED)} only; other "
            "architectures train under data parallel (use parallel.tp=1 parallel.pp=1)"
        )
    if arch in GPT2_STYLE and p.sequence_parallel:
        raise ConfigError(
            "parallel.sequence_parallel: true is not allowed for GPT2LMHeadModel (its learned "
            "position embedding is added to the sequence-sharded token embedding); set it false"
        )
    if arch in GPT2_STYLE and getattr(config, "add_cross_attention", False):
        raise ConfigError("model.hf_overrides.add_cross_attention: plait trains decoder-only GPT-2")
    vocab, need = config.vocab_size, data_vocab_size(cfg)
    if need is not None and vocab < need:
        raise ConfigError(
            f"model.hf_overrides.vocab_size: {vocab} is too small for data.name={d.name} "
            f"(token ids up to {need - 1}); needs >= {need}"
        )
    if m.hf_pretrained is not None:
        build_hf(cfg).check_pretrained()
    longest = getattr(config, "max_position_embeddings", None)
    if longest is not None and longest < d.seq_len:
        raise ConfigError(
            f"model.hf_overrides.max_position_embeddings: {longest} is shorter than "
            f"data.seq_len={d.seq_len}"
        )


@register_model("hf", task="lm", check=check_hf)
def build(cfg: Config) -> HFModel:
    """On torch's current default device: parameters built on meta, derived buffers computed on
    CPU, then materialised there unless it is meta."""
    model = build_hf(cfg)
    device = torch.get_default_device()
    if device.type != "meta":
        model.to_empty(device=device)
        model.init_buffers()
    return model

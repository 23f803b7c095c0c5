"""Hugging Face Transformers causal LMs under plait's model interface (``model.name: hf``).

The config comes from a local ``config.json`` (``model.hf_config``), a ``save_pretrained``
folder (``model.hf_pretrained``) or the class defaults, plus ``model.hf_overrides``; nothing is
ever downloaded. Three adapters give such a model ``layers``, ``tp_plan`` and per-name init:

- :class:`HFDecoder` (Llama / Mistral): HF's own decoder-layer modules, re-parented so a
  parameter's name is HF's minus the ``model.`` prefix (``layers.3.self_attn.q_proj.weight``);
  the forward chain (embed -> layers -> norm -> head) is written here, passing each layer the
  rotary tables and the causal mask it needs.
- :class:`HFGPT2` (GPT-2, ``plait.models.hf_gpt2``): GPT-2's fused ``Conv1D`` q/k/v cannot be
  column-sharded by heads, so the blocks are rebuilt from ``nn.Linear`` with separate q/k/v;
  the export mapping re-fuses and transposes them into HF's layout.
- :class:`HFWhole`: any other ``*ForCausalLM``: the whole HF model is one block, no tp plan;
  it trains under data parallel, and tp / pp > 1 are refused in :func:`check_hf`.

Tied embeddings (GPT-2, some Llamas): plait trains the output head as its own parameter that
*starts* equal to the input embedding (same per-name seed, or the same pretrained tensor).
A pipeline puts embedding and head on different stages and tensor parallel re-creates both
parameters, so a tie would not survive either; untying keeps every layout on one trajectory.
Exports say ``tie_word_embeddings: false``, so Transformers loads exactly what was trained.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.config import Config, ModelConfig
from plait.errors import ConfigError, did_you_mean
from plait.models.base import PlaitModel, canonical_name, name_seed
from plait.models.hf_weights import HFWeights, check_pretrained
from plait.tensor_parallel.apply import SEQ_SHARDS_ATTR

LLAMA_STYLE = ("LlamaForCausalLM", "MistralForCausalLM")
GPT2_STYLE = ("GPT2LMHeadModel",)
SUPPORTED = LLAMA_STYLE + GPT2_STYLE  # architectures with layers for pp and a tp plan


# ---------------------------------------------------------------- config


#: oldest Transformers tested: from 4.48 HF attention reshapes by -1 heads, so a rank's local
#: heads work under tensor parallel (4.44 fails there); 4.48.3 and 5.23 pass tests/test_hf.py
MIN_TRANSFORMERS = "4.48"


def hf_class(arch: str) -> type:
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
        raise ConfigError(
            f"model.name: 'hf' needs transformers>={MIN_TRANSFORMERS}, found "
            f"{transformers.__version__}; pip install -U 'plait[hf]'"
        )
    cls = getattr(transformers, arch, None)
    ok = (
        isinstance(cls, type)
        and issubclass(cls, transformers.PreTrainedModel)
        and arch.endswith(("ForCausalLM", "LMHeadModel"))
    )
    if not ok:
        names = [n for n in dir(transformers) if n.endswith("ForCausalLM")] + list(SUPPORTED)
        raise ConfigError(
            f"model.hf_arch: {arch!r} is not a Transformers causal-LM class{did_you_mean(arch, names)}; "
            f"use a *ForCausalLM class name such as {', '.join(SUPPORTED)}"
        )
    return cls


def _config_file(key: str, value: str) -> Path:
    p = Path(value)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(
            f"{key}: {value!r} does not exist or holds no config.json; pass a local config.json "
            "or a save_pretrained folder (nothing is downloaded)"
        )
    return p


def hf_config(m: ModelConfig) -> tuple[type, Any]:
    """(model class, Transformers config) from ``model.hf_*``; every mistake is a ConfigError."""
    raw: dict[str, Any] = {}
    if m.hf_pretrained is not None:
        folder = Path(m.hf_pretrained)
        if not folder.is_dir():
            raise ConfigError(
                f"model.hf_pretrained: {m.hf_pretrained!r} is not a folder; pass a local "
                "save_pretrained folder (config.json + *.safetensors)"
            )
    src_key = "model.hf_config" if m.hf_config is not None else "model.hf_pretrained"
    src = m.hf_config if m.hf_config is not None else m.hf_pretrained
    if src is not None:
        path = _config_file(src_key, src)
        try:
            raw = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{src_key}: {str(path)!r} is not valid JSON: {e}") from None
    arch = m.hf_arch or (raw.get("architectures") or [None])[0]
    if arch is None:
        raise ConfigError(
            "model.hf_arch: not set and no config.json names its architectures; set it, "
            f"e.g. model.hf_arch={SUPPORTED[0]}"
        )
    cls = hf_class(arch)
    known = cls.config_class().to_dict()
    for k in m.hf_overrides:
        if k not in known and not hasattr(cls.config_class, k):
            raise ConfigError(
                f"model.hf_overrides.{k}: not a field of {cls.config_class.__name__}"
                f"{did_you_mean(k, known)}"
            )
    raw.pop("model_type", None)  # the class given by hf_arch decides it
    config = cls.config_class.from_dict({**raw, **m.hf_overrides})
    config.architectures = [arch]
    config._attn_implementation = "sdpa"  # the kernel plait's forward and the tests use
    return cls, config


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
    vocab = config.vocab_size
    if d.name == "stdlib_text" and vocab < 256:
        raise ConfigError(
            f"model.hf_overrides.vocab_size: {vocab} is too small for byte-level "
            "data.name=stdlib_text; needs >= 256"
        )
    if d.name == "tokens":  # the token data's vocabulary must fit the embedding
        from plait.data.tokens import check_vocab

        check_vocab(vocab, d, key="model.hf_overrides.vocab_size")
    if m.hf_pretrained is not None:
        check_pretrained(build_hf(cfg))
    longest = getattr(config, "max_position_embeddings", None)
    if longest is not None and longest < d.seq_len:
        raise ConfigError(
            f"model.hf_overrides.max_position_embeddings: {longest} is shorter than "
            f"data.seq_len={d.seq_len}"
        )


# ---------------------------------------------------------------- building


@contextlib.contextmanager
def _params_on_meta():
    """Parameters go to the meta device as they are registered; buffers stay real. So HF's
    derived buffers (rotary ``inv_freq``) are computed once here and can be restored after
    ``to_empty`` without plait knowing each architecture's formula (accelerate's
    ``init_empty_weights(include_buffers=False)``, in ten lines)."""
    register = nn.Module.register_parameter

    def to_meta(self, name, param):
        register(self, name, param)
        if param is not None and not param.is_meta:
            p = self._parameters[name]
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = to_meta
    try:
        with torch.device("cpu"):
            yield
    finally:
        nn.Module.register_parameter = register


def hf_skeleton(cls: type, config) -> nn.Module:
    """The HF model with parameters on meta (no memory) and real buffers."""
    with _params_on_meta():
        model = cls(config)
    return model


class HFModel(PlaitModel):
    """Shared behaviour of the adapters: HF config, buffers, HF-like init, pretrained weights."""

    task = "lm"

    def __init__(self, hf_cls: type, config, pretrained: str | None):
        super().__init__()
        self.hf_cls, self.hf_config, self.pretrained = hf_cls, config, pretrained
        self.vocab_size = config.vocab_size
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self._seed = 0
        self._weights: HFWeights | None = None  # set while init_weights reads a checkpoint

    def _keep_buffers(self) -> None:
        """Remember the buffers' values (computed at construction) for :meth:`init_buffers`."""
        self._buffer_values = {n: b.detach().clone() for n, b in self.named_buffers()}

    def init_buffers(self) -> None:
        with torch.no_grad():
            for name, buf in self.named_buffers():
                value = self._buffer_values.get(canonical_name(name))
                if value is not None:
                    buf.copy_(value.to(buf.device, buf.dtype))

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        self._seed = seed
        self._weights = HFWeights(self.pretrained) if self.pretrained else None
        try:
            super().init_weights(seed)
        finally:
            self._weights = None

    # ---- names: the adapter's parameter name <-> the HF checkpoint's tensors
    def hf_name(self, name: str) -> str:
        """HF's name of a parameter whose value is one HF tensor as is."""
        raise NotImplementedError

    def head_name(self) -> str:
        """The adapter's name of the untied output head (None: HF's own tie is kept)."""
        return "lm_head.weight"

    def embed_name(self) -> str:
        raise NotImplementedError

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full state under the adapter's names -> HF's state dict (what save_pretrained takes)."""
        return {self.hf_name(k): v for k, v in state.items()}

    def from_hf(self, name: str, weights: HFWeights) -> torch.Tensor:
        """The value of parameter ``name`` read from an HF checkpoint."""
        if name == self.head_name() and not weights.has(self.hf_name(name)):
            return weights.get(self.hf_name(self.embed_name()))  # tied in the checkpoint
        return weights.get(self.hf_name(name))

    # ---- init
    def param_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        if self._weights is not None:
            t = self.from_hf(name, self._weights).float()
            if t.shape != shape:
                raise ConfigError(
                    f"model.hf_pretrained: {name} has shape {tuple(t.shape)} in "
                    f"{self.pretrained!r} but {tuple(shape)} in the model; check model.hf_overrides"
                )
            return t
        if self.tied and name == self.head_name():
            # starts equal to the embedding: the same draw as the embedding's own name
            embed = self.embed_name()
            gen = torch.Generator().manual_seed(name_seed(self._seed, embed))
            return self.hf_init(embed, shape, gen)
        return self.hf_init(name, shape, gen)

    def hf_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        """Transformers' ``_init_weights``: normal(0, initializer_range) for Linear/Embedding
        weights, ones for norm weights, zeros for biases."""
        if len(shape) == 1:
            return torch.zeros(shape) if name.endswith("bias") else torch.ones(shape)
        std = getattr(self.hf_config, "initializer_range", 0.02)
        return torch.empty(shape).normal_(0.0, std, generator=gen)


class HFDecoder(HFModel):
    """Llama / Mistral: HF's embedding, decoder layers, final norm and rotary embedding."""

    def __init__(self, hf_cls: type, config, pretrained: str | None = None):
        super().__init__(hf_cls, config, pretrained)
        hf = hf_skeleton(hf_cls, config)
        base = hf.model
        self.embed_tokens = base.embed_tokens
        self.layers = nn.ModuleDict({str(i): layer for i, layer in enumerate(base.layers)})
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb  # no parameters: kept on every pipeline stage
        self.lm_head = hf.lm_head
        if self.lm_head.weight is self.embed_tokens.weight:
            self.lm_head.weight = nn.Parameter(torch.empty_like(self.lm_head.weight))
        self.sliding_window = getattr(config, "sliding_window", None)
        self._keep_buffers()

    def pre_modules(self) -> list[str]:
        return ["embed_tokens"]

    def post_modules(self) -> list[str]:
        return ["norm", "lm_head"]

    def hf_name(self, name: str) -> str:
        return name if name.startswith("lm_head.") else f"model.{name}"

    def embed_name(self) -> str:
        return "embed_tokens.weight"

    def _mask(self, T: int, device) -> torch.Tensor | None:
        """None: causal (HF's sdpa path sets is_causal). Mistral's sliding window, when shorter
        than the sequence, as HF's boolean mask: query i sees keys j with i - w < j <= i."""
        w = self.sliding_window
        if w is None or T <= w:
            return None
        i = torch.arange(T, device=device)
        d = i[:, None] - i[None, :]
        return ((d >= 0) & (d < w))[None, None]  # (1, 1, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the first stage takes token ids (B, T), later pipeline stages hidden states (B, T, D),
        # under sequence parallel their local sequence shard (B, T / tp, D): positions and mask
        # are for the whole sequence, which attention sees after its all-gather
        T = x.shape[1] * (1 if self.embed_tokens is not None else getattr(self, SEQ_SHARDS_ATTR, 1))
        h = self.embed_tokens(x) if self.embed_tokens is not None else x
        pos = torch.arange(T, device=h.device)[None]  # (1, T)
        rope = self.rotary_emb(h, pos)  # cos, sin: (1, T, E)
        mask = self._mask(T, h.device)
        for layer in self.layers.values():
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            if isinstance(h, tuple):  # older Transformers return (hidden, ...)
                h = h[0]
        if self.norm is not None:
            h = self.norm(h)
        return self.lm_head(h) if self.lm_head is not None else h  # (B, T, V) logits

    def tp_plan(self) -> dict[str, str]:
        # Megatron-LM (arXiv 1909.08053) sec. 3, as plait.models.gpt: q/k/v and gate/up
        # column-parallel, o and down row-parallel; gather_input makes the shared input of the
        # column-parallel Linears replicated once. HF reshapes with -1 heads, so a rank's
        # attention runs on its local heads unchanged.
        block = {
            "self_attn": "gather_input",
            "self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise",
            "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise",
            "mlp": "gather_input",
            "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise",
            "input_layernorm": "norm", "post_attention_layernorm": "norm",
        }  # fmt: skip
        plan = {f"layers.*.{k}": v for k, v in block.items()}
        plan.update({"embed_tokens": "vocab_embedding", "norm": "norm", "lm_head": "vocab_head"})
        return plan

    def tp_dims(self) -> dict[str, int]:
        c = self.hf_config
        key = "model.hf_overrides."
        return {
            key + "num_attention_heads": c.num_attention_heads,
            key + "num_key_value_heads": c.num_key_value_heads or c.num_attention_heads,
            key + "intermediate_size": c.intermediate_size,
            key + "vocab_size": c.vocab_size,
        }

    def hf_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        t = super().hf_init(name, shape, gen)
        pad = self.hf_config.pad_token_id
        if name == "embed_tokens.weight" and pad is not None and 0 <= pad < shape[0]:
            t[pad] = 0.0  # as HF's _init_weights for an Embedding with padding_idx
        return t


class HFWhole(HFModel):
    """An architecture plait has no plan for: the whole HF model is the single block."""

    def __init__(self, hf_cls: type, config, pretrained: str | None = None):
        super().__init__(hf_cls, config, pretrained)
        self.tied = False  # HF's own tie is kept: the model is never cut or sharded
        self.layers = nn.ModuleDict({"0": hf_skeleton(hf_cls, config)})
        self._keep_buffers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers["0"](input_ids=x, use_cache=False).logits

    def hf_name(self, name: str) -> str:
        return name.removeprefix("layers.0.")

    def head_name(self) -> str:
        return ""


def build_hf(cfg: Config) -> HFModel:
    """The adapter for ``cfg.model`` (parameters on meta, buffers computed)."""
    from plait.models.hf_gpt2 import HFGPT2

    cls, config = hf_config(cfg.model)
    arch = cls.__name__
    adapter = HFDecoder if arch in LLAMA_STYLE else HFGPT2 if arch in GPT2_STYLE else HFWhole
    return adapter(cls, config, cfg.model.hf_pretrained)

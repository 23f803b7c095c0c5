"""What every Hugging Face adapter shares: the skeleton (Transformers' modules with parameters
on meta and real buffers), HF-like init drawn per parameter name, pretrained weights read by
name, and the name mapping export uses."""

from __future__ import annotations

import torch
from torch import nn

from plait.errors import ConfigError
from plait.models.base import PlaitModel, canonical_name, name_seed
from plait.models.hf.weights import HFWeights


def hf_skeleton(cls: type, config) -> nn.Module:
    """The HF model with parameters on meta (no memory) and real buffers: HF's derived buffers
    (rotary ``inv_freq``) are computed here, once, and restored after ``to_empty`` without plait
    knowing each architecture's formula. Accelerate's ``init_empty_weights`` does exactly this
    (its patch of ``register_parameter`` lasts for the ``with`` only); accelerate is part of
    ``plait[hf]`` and, like transformers, imported only for ``model.name=hf``."""
    # deferred: accelerate is an optional extra (hf)
    from accelerate import init_empty_weights

    with torch.device("cpu"), init_empty_weights(include_buffers=False):
        return cls(config)


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

    def check_pretrained(self) -> None:
        """Every tensor the model needs is in ``pretrained`` with its shape (headers only)."""
        weights = HFWeights(self.pretrained)
        need = self.to_hf(dict(self.named_parameters()))  # meta tensors: shapes, no memory
        for name, t in need.items():
            if not weights.has(name) and name == self.hf_name(self.head_name()):
                continue  # a tied checkpoint: the head is read from the embedding
            shape = weights.shape(name)
            if shape != tuple(t.shape):
                raise ConfigError(
                    f"model.hf_pretrained: {name} has shape {shape} in {self.pretrained!r} but "
                    f"{tuple(t.shape)} in the configured model; drop the model.hf_overrides / "
                    "model.hf_config that change sizes, or point at a checkpoint of this shape"
                )

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

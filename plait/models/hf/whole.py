"""Any other ``*ForCausalLM``: plait has no plan for its layers, so the whole Transformers model
is the single block, with no tp plan: it trains under data parallel, and tp / pp > 1 are refused
before launch (``check_hf``). Transformers' own tie of embedding and head is kept."""

from __future__ import annotations

import torch
from torch import nn

from plait.models.base import attention_flops, matmul_flops
from plait.models.hf.base import HFModel, hf_skeleton


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

    def block_flops(self, block: nn.Module, seq_len: int) -> float:
        c = self.hf_config  # every layer's attention, sized by the config's standard names
        layers, width = getattr(c, "num_hidden_layers", 0), getattr(c, "hidden_size", 0)
        return matmul_flops(block) + layers * attention_flops(seq_len, width)

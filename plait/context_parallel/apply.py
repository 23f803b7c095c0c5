"""Wrap step 2b of plait.parallelize: give the model (or pipeline stage) its context-parallel
attention. The model reads ``plait.parallel_attrs.CP_ATTR`` on itself (positions) and on each
attention module (the attention); Hugging Face attention modules are switched to plait's
registered attention function, which calls the same object."""

from __future__ import annotations

import copy

from torch import nn

from plait.context_parallel.attention import AllGatherAttention
from plait.parallel_attrs import CP_ATTENTION_MODULES, CP_ATTR

#: the name plait registers its attention under in Transformers' AttentionInterface
HF_ATTENTION = "plait_cp"


def apply_cp(model: nn.Module, *, cp_mesh, window: int | None = None) -> None:
    """Set the all-gather attention over ``cp_mesh`` on ``model`` and its attention modules
    (those whose class name the model lists in ``CP_ATTENTION_MODULES``); no-op at cp=1."""
    cp = cp_mesh.size()
    if cp == 1:
        return
    attend = AllGatherAttention(cp_mesh.get_group(), cp_mesh.get_local_rank(), cp, window)
    setattr(model, CP_ATTR, attend)
    names = getattr(model, CP_ATTENTION_MODULES, ())
    for mod in model.modules():
        if type(mod).__name__ in names:
            setattr(mod, CP_ATTR, attend)
            if hasattr(mod, "config"):  # Transformers: route through plait's attention
                _register_hf()
                mod.config = copy.copy(mod.config)  # this module only, not the shared config
                mod.config._attn_implementation = HF_ATTENTION


def _hf_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """Transformers' attention-function signature: (B, H, T, E) in, (B, T, H, E) out; the mask
    it passes is for an unsplit sequence, so the global-position mask replaces it."""
    out = getattr(module, CP_ATTR)(query, key, value, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_hf() -> None:
    # deferred: transformers is an optional extra (hf), loaded only for model.name=hf
    from transformers import AttentionInterface

    AttentionInterface.register(HF_ATTENTION, _hf_attention)

"""Trained plait weights -> a Transformers ``save_pretrained`` folder (config.json +
model.safetensors) that ``AutoModelForCausalLM.from_pretrained`` loads.

The adapter maps its full state to HF's names and layouts (``HFModel.to_hf``: a rename for
Llama / Mistral, re-fused and transposed q/k/v for GPT-2); Transformers itself then builds the
model from the config (parameters on meta, its own derived buffers computed), takes that state
strictly, and writes it with its own ``save_pretrained``, so the folder is exactly what
Transformers would have written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from plait.errors import PlaitError
from plait.models.base import canonical_name
from plait.models.hf.base import HFModel, hf_skeleton


def export_hf(model: nn.Module, state: dict[str, torch.Tensor], out: Path, what: str = "") -> Path:
    """Write ``state`` (full weights under the adapter's names) as a save_pretrained folder;
    ``what`` names the source in the refusal of a model that is not a Transformers one."""
    if not isinstance(model, HFModel):
        raise PlaitError(
            f"--format hf: {what or 'the model'} is {type(model).__name__}, not a Transformers "
            "model (model.name=hf); export it with --format safetensors"
        )
    config = copy.deepcopy(model.hf_config)
    if model.tied:
        config.tie_word_embeddings = False  # plait trained the head as its own parameter
    hf_state = model.to_hf({canonical_name(k): v.detach().cpu() for k, v in state.items()})
    hf = hf_skeleton(model.hf_cls, config)  # buffers (rotary tables) computed by Transformers
    missing, unexpected = hf.load_state_dict(hf_state, strict=False, assign=True)
    # HF's own tie (kept by architectures plait wraps whole) lists the tied copy as missing
    tied = set(getattr(hf, "all_tied_weights_keys", None) or {}) if not model.tied else set()
    if unexpected or set(missing) - tied:
        raise PlaitError(
            f"export to Transformers: state does not fit {type(hf).__name__}: missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    if set(missing) & tied:
        hf.tie_weights()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    return out

"""Trained plait weights -> a Transformers ``save_pretrained`` folder (config.json +
model.safetensors) that ``AutoModelForCausalLM.from_pretrained`` loads.

The adapter maps its full state to HF's names and layouts (``HFModel.to_hf``: a rename for
Llama / Mistral, re-fused and transposed q/k/v for GPT-2); Transformers itself then builds the
model from the config, takes that state strictly, and writes it with its own
``save_pretrained``, so the folder is exactly what Transformers would have written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from plait.errors import PlaitError
from plait.models.hf import HFModel


def export_hf(model: HFModel, state: dict[str, torch.Tensor], out: Path) -> Path:
    """Write ``state`` (full weights under the adapter's names) as a save_pretrained folder."""
    from plait.models.base import canonical_name

    config = copy.deepcopy(model.hf_config)
    if model.tied:
        config.tie_word_embeddings = False  # plait trained the head as its own parameter
    hf_state = model.to_hf({canonical_name(k): v.detach().cpu() for k, v in state.items()})
    with torch.device("meta"):
        hf = model.hf_cls(config)
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
    with torch.no_grad():  # derived buffers (rotary tables) are not in the state: restore
        for name, value in model._buffer_values.items():
            hf_name = model.hf_name(name)
            mod, _, leaf = hf_name.rpartition(".")
            owner = hf.get_submodule(mod)
            if getattr(owner, leaf, None) is not None and getattr(owner, leaf).is_meta:
                owner.register_buffer(
                    leaf, value.clone(), persistent=leaf not in owner._non_persistent_buffers_set
                )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    return out


def export_hf_checkpoint(path: Path, out: Path) -> int:
    """One process: a plait checkpoint of any layout or engine -> a save_pretrained folder;
    returns the step it holds."""
    from plait.checkpoint import consolidated

    cfg, model, step = consolidated(path)
    if cfg.model.name != "hf":
        raise PlaitError(
            f"--format hf: {str(path)!r} holds model.name={cfg.model.name}, not a Transformers "
            "model; export it with --format safetensors"
        )
    export_hf(model, model.state_dict(), out)
    return step

"""Weights of a local Hugging Face ``save_pretrained`` folder for ``model.hf_pretrained``: read
tensor by tensor from safetensors (never pickle); shapes come from the file headers alone, so
``HFModel.check_pretrained`` compares them with the configured model before launch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from plait.errors import ConfigError


class HFWeights:
    """Tensors of a local save_pretrained folder, read one at a time from its safetensors
    file(s) (no pickle), so no rank ever holds the whole checkpoint."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.is_file():
            self.where = {
                k: self.folder / f for k, f in json.loads(index.read_text())["weight_map"].items()
            }
        elif single.is_file():
            with safe_open(str(single), "pt") as f:
                self.where = {k: single for k in f.keys()}  # noqa: SIM118
        else:
            raise ConfigError(
                f"model.hf_pretrained: {str(self.folder)!r} has no model.safetensors(.index.json); "
                "plait reads safetensors only (save with save_pretrained(..., safe_serialization=True))"
            )

    def _key(self, name: str) -> str | None:
        if name in self.where:
            return name
        # a checkpoint of the bare base model (e.g. OpenAI's gpt2: "h.0..." not "transformer.h.0...")
        head, _, rest = name.partition(".")
        return rest if rest in self.where else None

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def _open(self, name: str):
        key = self._key(name)
        if key is None:
            raise ConfigError(
                f"model.hf_pretrained: {str(self.folder)!r} has no tensor {name!r}; is it a "
                "checkpoint of the configured architecture?"
            )
        return key, safe_open(str(self.where[key]), "pt")

    def get(self, name: str) -> torch.Tensor:
        key, f = self._open(name)
        with f:
            return f.get_tensor(key)

    def shape(self, name: str) -> tuple[int, ...] | None:
        key, f = self._open(name)
        with f:
            return tuple(f.get_slice(key).get_shape())

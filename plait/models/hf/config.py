"""The Transformers class and config of ``model.hf_*``: from a local ``config.json``
(``model.hf_config``), a ``save_pretrained`` folder (``model.hf_pretrained``) or the class
defaults, plus ``model.hf_overrides``; nothing is ever downloaded. Every mistake is a
ConfigError naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plait.config import ModelConfig
from plait.errors import ConfigError, did_you_mean

LLAMA_STYLE = ("LlamaForCausalLM", "MistralForCausalLM")
GPT2_STYLE = ("GPT2LMHeadModel",)
SUPPORTED = LLAMA_STYLE + GPT2_STYLE  # architectures with layers for pp and a tp plan

#: oldest Transformers tested: from 4.48 HF attention reshapes by -1 heads, so a rank's local
#: heads work under tensor parallel (4.44 fails there); 4.48.3 and 5.23 pass tests/test_hf.py
MIN_TRANSFORMERS = "4.48"


def hf_class(arch: str) -> type:
    # transformers is optional and heavy (seconds to import): only model.name=hf imports it
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
    # sdpa: the kernel plait's forward and the tests use (the config's public constructor key)
    config = cls.config_class.from_dict({**raw, **m.hf_overrides, "attn_implementation": "sdpa"})
    config.architectures = [arch]
    return cls, config

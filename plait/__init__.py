"""plait: data, tensor and pipeline parallel training around one model interface.

The public Python API is what ``__all__`` lists (docs/api.md); every other module is private.
Names load on first use, so ``import plait`` (and the CLI's ``--help``) stays instant.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = [
    "Config",
    "ConfigError",
    "Parallel",
    "PlaitError",
    "PlaitModel",
    "RunResult",
    "StepData",
    "load_checkpoint",
    "load_config",
    "parallelize",
    "save_checkpoint",
    "train",
]

_WHERE = {
    "Config": "plait.config",
    "ConfigError": "plait.errors",
    "Parallel": "plait.api",
    "PlaitError": "plait.errors",
    "PlaitModel": "plait.models.base",
    "RunResult": "plait.trainer",
    "StepData": "plait.data.base",
    "load_checkpoint": "plait.api",
    "load_config": "plait.config",
    "parallelize": "plait.api",
    "save_checkpoint": "plait.api",
    "train": "plait.api",
}


class _Package(types.ModuleType):
    """``plait.train`` and ``plait.parallelize`` are API functions that share their names with
    modules (``python -m plait.train``, the wrap order). Importing such a module would set the
    package attribute to it; keep the function (the module stays in ``sys.modules``, so
    ``from plait.train import main`` still works)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'plait' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

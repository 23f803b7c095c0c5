"""The model contract, checked on the meta device before any process group: one line naming
what a user's model must fix (``docs/own_model.md`` states the contract in full).

What is checked: it derives from :class:`PlaitModel`; ``layers`` is an ``nn.ModuleDict`` of
blocks keyed "0", "1", ...; ``pre_modules()``/``post_modules()`` name attributes that exist;
``loss`` is a *sum* (the loss of two samples is the sum of their losses, not their mean) and
``count`` a positive number; under tp > 1 a ``tp_plan``; under pp > 1 the forward runs on a
first stage without the post modules and on a last stage without the pre modules.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from plait import components
from plait.config import Config
from plait.errors import ConfigError
from plait.models.base import PlaitModel


def _fail(model: nn.Module, what: str) -> None:
    raise ConfigError(f"model {type(model).__name__}: {what} (see docs/own_model.md)")


def sample_batch(model: PlaitModel, cfg: Config) -> dict[str, torch.Tensor]:
    """Two samples shaped as the run feeds them: from the active data source when one is
    given, else synthetic from the model's ``vocab_size`` (lm) or ``in_features`` and
    ``num_classes`` (classification)."""
    data = components.active().data
    if data is not None:
        return data.sample("train", 0, 0, 2, 2)
    g = torch.Generator().manual_seed(0)
    if model.task == "lm":
        v = getattr(model, "vocab_size", None)
        if not isinstance(v, int):
            _fail(model, "a language model (task='lm') needs an int attribute vocab_size")
        t = min(cfg.data.seq_len, 16)
        x = torch.randint(v, (2, t + 1), generator=g)
        return {"input": x[:, :-1], "target": x[:, 1:]}
    n_in, n_out = getattr(model, "in_features", None), getattr(model, "num_classes", None)
    if not (isinstance(n_in, int) and isinstance(n_out, int)):
        _fail(model, "a classifier needs int attributes in_features and num_classes")
    return {
        "input": torch.randn(2, n_in, generator=g),
        "target": torch.randint(n_out, (2,), generator=g),
    }


def _forward(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return model(x.to("meta") if x.device.type != "meta" else x)
    except Exception as e:  # the user's forward: name the stage it failed on
        _fail(model, f"forward fails {what}: {type(e).__name__}: {e}".splitlines()[0])


def check_contract(model: nn.Module, cfg: Config) -> None:
    """Refuse, in one line, a model plait cannot cut, shard or normalise (meta device only)."""
    if not isinstance(model, PlaitModel):
        _fail(model, "is not a plait.PlaitModel; derive the class from plait.PlaitModel")
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleDict) or len(layers) == 0:
        _fail(
            model,
            "has no `layers`; put its blocks in self.layers = nn.ModuleDict({'0': ..., '1': ...})",
        )
    if list(layers.keys()) != [str(i) for i in range(len(layers))]:
        _fail(model, f"layers keys {list(layers.keys())[:4]} are not '0', '1', ... in order")
    for kind in ("pre_modules", "post_modules"):
        for name in getattr(model, kind)():
            if not isinstance(getattr(model, name, None), nn.Module):
                _fail(model, f"{kind}() names {name!r}, which is not a module attribute")
    if model.task not in ("lm", "classification"):
        _fail(model, f"task {model.task!r} is not allowed; expected 'lm' or 'classification'")
    if cfg.parallel.tp > 1 and not model.tp_plan():
        _fail(
            model,
            f"has no tp_plan(), which parallel.tp={cfg.parallel.tp} needs; define tp_plan() or use parallel.tp=1",
        )
    batch = sample_batch(model, cfg)
    out_shape = _forward(model, batch["input"], "on the meta device").shape
    _check_loss(model, batch, out_shape)
    if cfg.parallel.pp > 1:
        _check_stages(model, batch["input"])


def _check_loss(model: PlaitModel, batch: dict, out_shape: torch.Size) -> None:
    out = torch.randn(out_shape, generator=torch.Generator().manual_seed(1))
    halves = [{k: v[i : i + 1] for k, v in batch.items()} for i in (0, 1)]
    both = float(model.loss(out, batch))
    parts = [float(model.loss(out[i : i + 1], h)) for i, h in enumerate(halves)]
    if abs(both - sum(parts)) > 1e-4 * max(abs(both), 1e-6):
        _fail(model, "loss() is not a sum over samples (is it a mean?); return the summed loss "
              "(e.g. cross_entropy(..., reduction='sum')): plait divides by the step's global count")  # fmt: skip
    n = model.count(batch)
    if not (isinstance(n, (int, float)) or torch.is_tensor(n)) or float(n) <= 0:
        _fail(
            model, f"count(batch) returned {n!r}; it must be the positive number of terms loss sums"
        )


def _check_stages(model: PlaitModel, x: torch.Tensor) -> None:
    """A first stage (no post modules, first block) and a last stage (no pre modules, last
    block) must each run: a pipeline stage sets the modules it does not own to None."""
    keys = list(model.layers.keys())
    first, last = copy.deepcopy(model), copy.deepcopy(model)
    for k in keys[1:]:
        del first.layers[k]
    for k in keys[:-1]:
        del last.layers[k]
    for name in model.post_modules():
        setattr(first, name, None)
    for name in model.pre_modules():
        setattr(last, name, None)
    post = ", ".join(model.post_modules()) or "none"
    pre = ", ".join(model.pre_modules()) or "none"
    h = _forward(first, x, f"on a first pipeline stage whose post modules ({post}) are None; skip a module that is None")  # fmt: skip
    _forward(last, h, f"on a last pipeline stage whose pre modules ({pre}) are None; skip a module that is None")  # fmt: skip

"""Shape checks for tensor parallel, run before any process group: every sharded dimension
must split evenly over tp (uneven shards are refused, not padded: an uneven head or vocabulary
split changes the math of the local view/reshape code and gains little)."""

from __future__ import annotations

import math

from plait.config import Config
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.models import build_model
from plait.models.base import PlaitModel
from plait.rules import divisors
from plait.tensor_parallel.spec import STYLES, match


def check_tp(cfg: Config, dims: ParallelDims, model: PlaitModel | None = None) -> None:
    """Refuse a tp degree the model's shapes cannot split; a no-op at tp=1. ``model``: the meta
    model, when the caller has built it already."""
    tp = dims.tp
    if tp == 1:
        return
    if model is None:
        model = build_model(cfg)  # meta device: shapes only, no memory
    plan = model.tp_plan()
    if not plan:
        raise ConfigError(
            f"parallel.tp: {tp} is not allowed for model.name={cfg.model.name}: it has no "
            "tensor-parallel plan; use parallel.tp=1"
        )
    unknown = sorted(set(plan.values()) - set(STYLES))
    if unknown:
        raise ConfigError(
            f"tp_plan of model.name={cfg.model.name} uses unknown styles {unknown}; known: {', '.join(STYLES)}"
        )
    if cfg.parallel.sequence_parallel and model.task != "lm":
        raise ConfigError(
            f"parallel.sequence_parallel: true is not allowed for model.name={cfg.model.name}: "
            "it has no sequence dimension; set it to false"
        )
    if getattr(cfg.model, "batchnorm", False):
        raise ConfigError(
            f"model.batchnorm: true is not allowed with parallel.tp={tp}: its plan has no style "
            "for BatchNorm; use parallel.tp=1 or model.batchnorm=false"
        )
    # (name, size) pairs that must divide by tp: the model's own named sizes, then every
    # module dimension its plan shards
    sizes: dict[str, int] = dict(model.tp_dims())
    covered: set[str] = set()
    for name, mod in model.named_modules():
        for pat, style in plan.items():
            if match(pat, name):
                covered.update(f"{name}.{p}" if name else p for p, _ in mod.named_parameters())
                attr, size_of = STYLES[style]
                if size_of is not None:
                    sizes.setdefault(f"{name}.{attr}", size_of(mod))
    missed = [n for n, _ in model.named_parameters() if n not in covered]
    if missed:
        raise ConfigError(
            f"parallel.tp: {tp} is not allowed for model.name={cfg.model.name}: its tp_plan "
            f"gives no style to {missed[:4]}; use parallel.tp=1"
        )
    if cfg.parallel.sequence_parallel:
        # the residual stream is split on it: under context parallel, this rank's T / cp
        key = "data.seq_len / parallel.cp" if dims.cp > 1 else "data.seq_len"
        sizes[key] = cfg.data.seq_len // dims.cp
    works = divisors(math.gcd(*sizes.values()))
    for key, size in sizes.items():
        if size % tp:
            raise ConfigError(
                f"{key}: {size} does not split over parallel.tp={tp} (sizes must divide evenly); "
                f"tp sizes that work for this model: {', '.join(map(str, works))}"
            )

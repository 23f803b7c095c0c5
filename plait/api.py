"""The Python API: train with objects instead of config names, or wrap a model for one's own
loop. Both go through the same checks and wrap order as ``plait train``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait import checkpoint as ck
from plait import components
from plait import dist as pdist
from plait.checkpoint import Checkpointer
from plait.config import Config, from_dict, load_config, parse_overrides
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.models import check_model
from plait.models.custom import build_custom_model
from plait.parallelize import check_supported
from plait.parallelize import parallelize as wrap
from plait.tensor_parallel import loss_context as tp_loss_context
from plait.tensor_parallel import plain
from plait.trainer import train as run
from plait.wrapped import unwrap


def _config(cfg: Config | str | Path | dict | None, overrides: list[str] | None) -> Config:
    if isinstance(cfg, Config):
        return (
            from_dict(_merge(cfg.to_dict(), parse_overrides(overrides or []))) if overrides else cfg
        )
    if isinstance(cfg, dict):
        return from_dict(_merge(cfg, parse_overrides(overrides or [])))
    return load_config(cfg, overrides)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train(
    cfg: Config | str | Path | dict | None = None,
    overrides: list[str] | None = None,
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    data: Any = None,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    return_state: bool = False,
):
    """Train on this process: alone, or as one rank of a job started by torchrun / plait launch
    (every rank calls this with the same arguments). ``cfg``: a Config, a YAML file, a shipped
    config's name, a dict, or None (defaults); ``overrides``: ``["train.steps=10", ...]``.

    ``model``: a :class:`plait.PlaitModel` or a zero-argument factory (called on the meta
    device; preferred, nothing is allocated twice) replacing ``model.*``; ``data``: a
    :class:`plait.StepData` replacing ``data.*``; ``optimizer``: ``params -> Optimizer``
    replacing ``optim.name`` (the ``optim.*`` schedule still scales its learning rate).
    Returns a :class:`plait.RunResult` (metrics; full weights with ``return_state``)."""
    c = _config(cfg, overrides)
    with components.use(components.Components(model=model, data=data, optimizer=optimizer)):
        return run(c, return_state=return_state)


@dataclass
class Parallel:
    """What one's own loop needs after :func:`parallelize` (like accelerate's ``prepare``)."""

    model: nn.Module  # the wrapped model: call it, then ``inner.loss`` on its output
    inner: Any  # the PlaitModel inside the data-parallel wrapper (loss, count, task)
    mesh: Any  # plait.mesh.Meshes (``mesh.root["tp"]``, ``mesh.dp``) or None on one process
    dims: Any  # plait.mesh.ParallelDims: pp, dp_replicate, dp_shard, tp, dp, world_size
    dp_rank: int  # which slice of the global batch this rank takes
    dp_size: int  # ranks that see different data; gradients are averaged over them
    device: torch.device
    config: Config

    def loss_context(self):
        """Enter around forward, loss and backward: cross-entropy on vocabulary-sharded logits
        under tensor parallel (``loss_parallel``), else a null context."""
        return tp_loss_context(self.inner)

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's summed loss as a plain tensor (a tp loss is a replicated DTensor)."""
        return plain(self.inner.loss(output, batch))


def parallelize(
    model: nn.Module | Callable[[], nn.Module],
    layout: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    device: str = "auto",
    **parallel: Any,
) -> Parallel:
    """Wrap ``model`` for this rank under ``layout`` (``parallel.*`` keys, e.g.
    ``{"dp_shard": 2, "tp": 2, "zero_stage": 2}``, or the same as keyword arguments) and
    initialise it by parameter name from ``seed`` (the same weights under any layout).
    Starts the process group from the launcher's environment when none exists. pp > 1 needs
    plait's pipeline schedules, cp > 1 its sequence split: use :func:`train` for them."""
    keys = {**(layout or {}), **parallel}
    if keys.get("pp", 1) != 1:
        raise ConfigError(
            f"parallel.pp: {keys['pp']} is not allowed in plait.parallelize (one's own loop "
            "cannot run pipeline schedules); use plait.train(cfg, model=...) for pp > 1"
        )
    if keys.get("cp", 1) != 1:
        raise ConfigError(
            f"parallel.cp: {keys['cp']} is not allowed in plait.parallelize (the batch split "
            "over cp and the dp x cp loss sums are the trainer's); use plait.train(cfg, "
            "model=...) for cp > 1"
        )
    if keys.get("ep", 1) != 1:
        raise ConfigError(
            f"parallel.ep: {keys['ep']} is not allowed in plait.parallelize (expert gradients "
            "are reduced in the trainer's optimizer step); use plait.train(cfg, model=...) "
            "with a gpt mixture-of-experts model for ep > 1"
        )
    if keys.get("zero_flat") is True:
        raise ConfigError(
            "parallel.zero_flat: true is not allowed in plait.parallelize (its gradient hooks "
            "and sharded optimizer live in the trainer's engine); use plait.train(cfg, model=...)"
        )
    keys["zero_flat"] = False  # one's own loop: DDP (ZeRO-1) / FSDP2 (ZeRO-2) wrap the model
    env = pdist.DistEnv.from_environ()
    cfg = from_dict({"parallel": keys, "train": {"seed": seed, "device": device}})
    with components.use(components.Components(model=model)):
        check_model(cfg)
        dims = ParallelDims.from_config(cfg, env.world_size)
        check_supported(cfg, dims)
        dev = pdist.pick_device(device, env.local_rank)
        if env.world_size > 1 and not torch.distributed.is_initialized():
            pdist.init_process_group(env, dev, cfg.parallel.timeout_s)
        mesh = dims.build_mesh(dev.type) if env.world_size > 1 else None
        meta = build_custom_model()
    wrapped = wrap(meta, cfg, dims, mesh, dev)
    dp_rank = mesh.dp.get_local_rank() if mesh is not None else 0
    return Parallel(wrapped, unwrap(wrapped), mesh, dims, dp_rank, dims.dp, dev, cfg)


def save_checkpoint(
    root: str | Path, step: int, model: nn.Module, optimizer=None, *, keep: int = 3
) -> Path:
    """Save ``model`` (and optimizer) from one's own loop as ``root/step-N``, a checkpoint
    :func:`load_checkpoint` (and ``plait export``) reads under any layout. Every rank calls it.
    The lr schedule is not state: rebuild it at the loaded step (``LambdaLR(opt, fn,
    last_epoch=step - 1)``), as plait's trainer does."""
    ck = Checkpointer(Path(root), every=0, keep=keep, async_save=False, layout={}, config={})
    return ck.save(step, model, optimizer)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer=None) -> int:
    """Load a checkpoint saved under any layout into ``model`` (and optimizer) of this layout;
    returns its step. ``path``: a ``step-N`` folder, or a root whose newest complete checkpoint
    is taken."""
    p = Path(path)
    if not ck.is_complete(p):
        p = ck.newest_valid(p) or p
    return ck.load(p, model, optimizer)

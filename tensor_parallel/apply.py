"""Apply a model's declarative ``tp_plan()`` over the mesh's ``tp`` axis (torchtitan's
``apply_tp``, driven by the model's plan instead of code per model)."""

from __future__ import annotations

import contextlib
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel, parallelize_module

from plait.errors import PlaitError
from plait.models.base import SEQ_SHARDS_ATTR
from plait.tensor_parallel.styles import make_style

# attributes set on the model by apply_tp: its logits are sharded on the class dim; the
# residual stream between blocks is SEQ_SHARDS_ATTR sequence shards (the model interface's name)
LOSS_PARALLEL_ATTR = "tp_loss_parallel"


def match(pattern: str, name: str) -> bool:
    """``layers.*.attention.wq`` matches ``layers.3.attention.wq``: one ``*`` per name part."""
    p, n = pattern.split("."), name.split(".")
    return len(p) == len(n) and all(fnmatchcase(b, a) for a, b in zip(p, n))


def apply_tp(
    model: nn.Module,
    *,
    tp_mesh,
    sequence_parallel: bool = False,
    loss_parallel: bool = True,
) -> nn.Module:
    """Shard ``model`` (on meta or materialised) in place; a no-op when tp has one rank.

    Every parameter ends as a DTensor on ``tp_mesh`` (sharded or replicated), so gradient
    clipping and FSDP2 see one kind of tensor. ``loss_parallel``: keep the logits of a
    ``vocab_head`` sharded on the vocabulary; compute the loss inside :func:`loss_context`.
    """
    if tp_mesh is None or tp_mesh.size() == 1:
        return model
    plan = model.tp_plan()
    if not plan:
        raise PlaitError(f"{type(model).__name__} has no tp_plan(); it refuses parallel.tp > 1")
    uses_head = False
    for name, mod in list(model.named_modules()):
        styles = [s for pat, s in plan.items() if match(pat, name)]
        if not styles:
            continue
        if len(styles) > 1:
            raise PlaitError(f"tp_plan: module {name!r} matches several styles {styles}")
        uses_head |= styles[0] == "vocab_head"
        style = make_style(
            styles[0], mod, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel
        )
        parallelize_module(mod, tp_mesh, style)
    missed = [n for n, p in model.named_parameters() if not isinstance(p, DTensor)]
    if missed:
        raise PlaitError(
            f"tp_plan of {type(model).__name__} leaves parameters unsharded: {missed[:4]}; "
            "give their modules a style (e.g. 'replicate')"
        )
    setattr(model, LOSS_PARALLEL_ATTR, loss_parallel and uses_head)
    setattr(model, SEQ_SHARDS_ATTR, tp_mesh.size() if sequence_parallel else 1)
    return model


def loss_context(model: nn.Module):
    """Enter around forward, loss and backward: ``loss_parallel()`` when the model's logits are
    vocabulary-sharded, so cross-entropy works on the shards (a max, a sum-exp and the target
    logit are all-reduced; the (B, T, V) logits are never gathered), else a null context."""
    if getattr(model, LOSS_PARALLEL_ATTR, False):
        return loss_parallel()
    return contextlib.nullcontext()


def plain(t: torch.Tensor) -> torch.Tensor:
    """A loss computed under loss_parallel is a replicated DTensor; the trainer mixes it with
    plain tensors (scaling, sums), so take its (identical) local value, keeping autograd."""
    return t.full_tensor() if isinstance(t, DTensor) else t

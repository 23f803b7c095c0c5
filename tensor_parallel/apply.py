"""Apply a model's declarative ``tp_plan()`` over the mesh's ``tp`` axis (torchtitan's
``apply_tp``, driven by the model's plan instead of code per model)."""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from plait.errors import PlaitError
from plait.parallel_attrs import EXPERT_SHARD_ATTR, LOSS_PARALLEL_ATTR, SEQ_SHARDS_ATTR
from plait.tensor_parallel.spec import match
from plait.tensor_parallel.styles import make_style


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
    missed = [
        n
        for n, p in model.named_parameters()
        if not isinstance(p, DTensor) and not hasattr(p, EXPERT_SHARD_ATTR)  # split by ep
    ]
    if missed:
        raise PlaitError(
            f"tp_plan of {type(model).__name__} leaves parameters unsharded: {missed[:4]}; "
            "give their modules a style (e.g. 'replicate')"
        )
    setattr(model, LOSS_PARALLEL_ATTR, loss_parallel and uses_head)
    setattr(model, SEQ_SHARDS_ATTR, tp_mesh.size() if sequence_parallel else 1)
    return model

"""What sits inside a wrapped model: the :class:`PlaitModel` for the trainer (loss, count, task)
and the module whose parameter names are the single-process ones (checkpoints, seed weights).
Low in the import graph so the data-parallel engines, the pipeline and checkpoints share it."""

from __future__ import annotations

from torch import nn

from plait.models.base import PlaitModel


def is_pipeline(model: nn.Module) -> bool:
    """A pipeline rank's stages (:class:`plait.pipeline.split.PipelineParts`: a ModuleList that
    knows its stage ids)."""
    return isinstance(model, nn.ModuleList) and hasattr(model, "stage_ids")


def unwrap(model: nn.Module) -> PlaitModel:
    """The PlaitModel inside whatever data-parallel wrapper holds it (DDP, fairscale
    ShardedDDP); for pipeline parts the first local stage, which has the model's loss, count
    and task."""
    if is_pipeline(model):
        return model[0]
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, PlaitModel) else model


def state_module(model: nn.Module) -> nn.Module:
    """The module whose parameter names are the single-process ones: a data-parallel wrapper's
    inner model (torch's state_dict helpers strip only their own wrappers). A pipeline rank holds its
    stages as a ModuleList (names would gain a "0." prefix), so build a view that shares their
    parameters under the whole model's attribute names: the rank's blocks in one ``layers`` and
    whichever pre/post modules its stages own."""
    if not is_pipeline(model):
        return unwrap(model)
    view = nn.Module()
    view.layers = nn.ModuleDict({k: b for part in model for k, b in part.layers.items()})
    for part in model:
        for name in part.pre_modules() + part.post_modules():
            if getattr(part, name, None) is not None:
                setattr(view, name, getattr(part, name))
    return view

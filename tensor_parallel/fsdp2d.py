"""2-D composition: FSDP2 over the data-parallel axis on top of tensor parallel (torchtitan's
order: TP first, then ``fully_shard``). Isolated in one function so the data-parallel engine
(``plait.ddp``) can take it over; it is the minimal ZeRO-3 application that 2-D needs."""

from __future__ import annotations

from torch import nn


def apply_fsdp_2d(model: nn.Module, *, dp_mesh) -> nn.Module:
    """Shard each block, then the root (embeddings, final norm, head), over ``dp_mesh``.

    ``dp_mesh`` must come from the same root mesh as the tp mesh the parameters live on, so
    FSDP2 builds 2-D (dp, tp) parameters. Gradients are reduce-scattered averaged over dp,
    which the trainer's ``dp / count`` loss scale expects. Works on a meta-device model."""
    from torch.distributed.fsdp import fully_shard

    if dp_mesh is None or dp_mesh.size() == 1:
        return model
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    return model

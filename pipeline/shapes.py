"""What crosses each stage boundary, so torch's ``PipelineStage`` is given its shapes.

Without example tensors, torch 2.13 infers a stage's input and output metadata by running the
stage once more in training mode: on the first micro-batch (first stage) or on uninitialised
``torch.empty`` placeholders (later stages). BatchNorm folds that extra forward into its running
statistics (``num_batches_tracked`` one too many per step, garbage that becomes inf/NaN) and
dropout draws an extra mask. Given input and output tensors ("static" mode), torch runs
nothing. They come from a forward of the unsharded model, cut like the real stages, on the meta
device (no memory, no compute, no communication).

Under sequence parallel a boundary carries this rank's sequence shard: the residual stream is
``Shard(1)`` (plait.tensor_parallel.styles), so dim 1 is divided by tp. The dtype is the meta
forward's (fp32: the residual stream starts at the fp32 embedding, and under autocast fp32 +
bf16 stays fp32); :func:`check_boundary` compares the real first step with all of it.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.config import Config
from plait.errors import PlaitError
from plait.models import build_model
from plait.pipeline.split import build_stage, stage_cuts


def boundary_tensors(cfg: Config, micro_input: torch.Tensor, seq_shards: int) -> list[torch.Tensor]:
    """Meta tensors ``[input of stage 0, output of stage 0 (= input of stage 1), ...,
    output of stage S-1]`` for one pipeline micro-batch shaped like ``micro_input``; floating
    activations require grad (torch gives their gradients the same shape)."""
    model = build_model(cfg).to("meta")  # hf models keep derived buffers on CPU: move them too
    n = cfg.parallel.pp * cfg.parallel.pp_virtual_stages
    cuts = stage_cuts(model, cfg, n)
    h = torch.empty(micro_input.shape, dtype=micro_input.dtype, device="meta")
    out = [h]
    with torch.no_grad():
        for s in range(n):
            h = build_stage(model, s, n, cuts)(h)
            out.append(h)
    for i in range(1, n):  # inner boundaries: the local sequence shard under sequence parallel
        t = out[i]
        if seq_shards > 1:
            shape = (t.shape[0], t.shape[1] // seq_shards, *t.shape[2:])  # (B, T/tp, D)
            t = torch.empty(shape, dtype=t.dtype, device="meta")
        out[i] = t.requires_grad_(t.is_floating_point())
    out[n] = out[n].requires_grad_(out[n].is_floating_point())
    return out


def check_boundary(module: nn.Module, stage: int, expected: torch.Tensor):
    """A forward hook that refuses an output other than ``expected``'s shape and dtype (torch
    would send it into a wrongly sized receive buffer); registered for the first step only."""

    def hook(mod, args, output):
        if isinstance(output, torch.Tensor) and (
            output.shape != expected.shape or output.dtype != expected.dtype
        ):
            raise PlaitError(
                f"pipeline stage {stage} produced {tuple(output.shape)} {output.dtype}, but its "
                f"boundary was computed as {tuple(expected.shape)} {expected.dtype} "
                "(plait.pipeline.shapes); please report this with the config"
            )

    return module.register_forward_hook(hook)

"""The style vocabulary a model's ``tp_plan()`` speaks, turned into DTensor ``ParallelStyle``s.

Megatron-LM (Shoeybi et al., arXiv 1909.08053, sec. 3) pairs a column-parallel Linear (weight
split on its output dim, no communication in forward) with a row-parallel one (weight split on
its input dim, one all-reduce of the partial outputs). Sequence parallelism (Korthikanti et al.,
arXiv 2205.05198, sec. 4.2) keeps the residual stream sharded on the sequence dim between blocks,
so the all-reduce becomes a reduce-scatter after the row-parallel Linear and an all-gather
before the column-parallel ones. Layouts are written for activations shaped (B, T, D).

Styles (the names models use):

- ``colwise``: Linear sharded on out_features; input replicated, output stays sharded (heads).
- ``rowwise``: Linear sharded on in_features; output all-reduced (Replicate), or
  reduce-scattered on the sequence dim under sequence parallel.
- ``gather_input``: on a module whose colwise Linears share one input (attention: q/k/v; MLP:
  w1/w3). Makes that input a replicated DTensor once, so backward sums the partial input
  gradients of all its Linears in ONE all-reduce (Megatron's "f"), or one reduce-scatter
  under sequence parallel, and forward all-gathers it once under sequence parallel.
- ``norm``: a per-token module on the residual stream (RMSNorm). Sequence parallel: sharded on
  the sequence dim (``SequenceParallel``); otherwise replicated parameters.
- ``vocab_embedding``: Embedding sharded on the vocabulary (row-parallel); ids out of a rank's
  range read zeros and the partial rows are summed.
- ``vocab_head``: output Linear sharded on the vocabulary; logits stay sharded on the class dim
  so ``loss_parallel`` computes cross-entropy without gathering them.
- ``replicate``: parameters replicated on every tp rank (a small classifier).
"""

from __future__ import annotations

import inspect

from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
)

from plait.tensor_parallel.spec import STYLES


class ReplicateParallel(ParallelStyle):
    """Replicated parameters, local tensors in and out. torch 2.13 has no public style for
    this; it is needed so every parameter is a DTensor on the tp mesh (gradient clipping and
    FSDP2 then see one kind of tensor). Inputs are replicated already, so no communication.

    The module computes on local tensors: for the duration of its forward each parameter is
    swapped for its local view (``to_local``, differentiable, so gradients still land on the
    DTensor parameter as Replicate), because computing through DTensor's dispatch costs more
    than the op on CPU-sized activations (measured: RMSNorm forward + backward on (8, 128, 256)
    3.1-4.0 ms as DTensor, 1.9-2.1 ms local; gpt has 2L+1 norms). DTensor inputs (another
    style's output left as DTensor) take the DTensor path as before."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        distribute_module(module, device_mesh)  # parameters -> Replicate DTensors
        inner = module.forward

        def forward(*args, **kwargs):
            if any(isinstance(a, DTensor) for a in (*args, *kwargs.values())):
                out = inner(*args, **kwargs)
                return out.to_local() if isinstance(out, DTensor) else out
            saved = []
            for mod in module.modules():
                for name, p in mod._parameters.items():
                    if isinstance(p, DTensor):
                        saved.append((mod, name, p))
            try:
                for mod, name, p in saved:
                    mod._parameters[name] = p.to_local()
                return inner(*args, **kwargs)
            finally:  # the DTensor parameters are back whatever happened
                for mod, name, p in saved:
                    mod._parameters[name] = p

        module.forward = forward
        return module


class GatherInput(PrepareModuleInput):
    """``gather_input``: the module's first argument (the activation) goes from the residual
    stream layout to Replicate, whether it is passed by position (plait's modules) or by its
    name (Hugging Face's decoder layers call ``self_attn(hidden_states=...)``); every other
    argument (RoPE tables, masks) passes through untouched."""

    def __init__(self, module: nn.Module, stream):
        params = list(inspect.signature(module.forward).parameters.values())
        first = params[0].name if params else "input"
        super().__init__(
            input_kwarg_layouts={first: stream},
            desired_input_kwarg_layouts={first: Replicate()},
            use_local_output=False,
        )
        self.stream = stream

    def _prepare_input_fn(self, inputs, device_mesh):
        if not inputs:
            return inputs
        first = self._prepare_input_arg(inputs[0], device_mesh, self.stream, Replicate())
        return (first, *inputs[1:])


def make_style(
    name: str, module: nn.Module, *, sequence_parallel: bool, loss_parallel: bool
) -> ParallelStyle:
    """The ParallelStyle for style ``name`` on ``module``."""
    # residual-stream layout between blocks: (B, T/tp, D) under SP, replicated (B, T, D) without
    stream = Shard(1) if sequence_parallel else Replicate()
    if name == "colwise":
        return ColwiseParallel()
    if name == "rowwise":
        return RowwiseParallel(output_layouts=stream)
    if name == "gather_input":
        # only the first input is the activation (attention also takes the RoPE tables)
        return GatherInput(module, stream)
    if name == "norm":
        return SequenceParallel() if sequence_parallel else ReplicateParallel()
    if name == "vocab_embedding":
        return RowwiseParallel(input_layouts=Replicate(), output_layouts=stream)
    if name == "vocab_head":
        return ColwiseParallel(
            input_layouts=stream,
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        )
    if name == "replicate":
        return ReplicateParallel()
    raise ValueError(f"unknown tensor-parallel style {name!r}; known: {', '.join(STYLES)}")

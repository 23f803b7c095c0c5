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
    FSDP2 then see one kind of tensor). Inputs are replicated already, so no communication."""

    def __init__(self, *, use_local_output: bool = True):
        super().__init__()
        self.use_local_output = use_local_output

    def _input_fn(self, mod, inputs, mesh):
        return tuple(
            DTensor.from_local(x, mesh, (Replicate(),), run_check=False)
            if not isinstance(x, DTensor) and hasattr(x, "shape")
            else x
            for x in inputs
        )

    def _output_fn(self, mod, out, mesh):
        return out.to_local() if self.use_local_output and isinstance(out, DTensor) else out

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        return distribute_module(
            module, device_mesh, input_fn=self._input_fn, output_fn=self._output_fn
        )


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

"""Tensor parallel: Megatron-style column/row sharding, sequence parallel, vocab-parallel
embedding and loss on DTensor, driven by each model's ``tp_plan()``.

- :func:`check_tp`: shape checks before any process group (each refusal names the dimension
  and the tp sizes that would work).
- :func:`apply_tp`: shard a model over the mesh's ``tp`` axis.
- :func:`loss_context` / :func:`plain`: compute the loss on vocabulary-sharded logits.

Random-state policy for dropout: the trainer seeds the default generator per *dp* rank, so all
tp ranks of a dp rank draw from one stream in lockstep. Replicated activations (the residual
stream without sequence parallel) thus get the same mask on every tp rank, as they must to stay
replicated. Sharded activations (attention heads; sequence shards under SP) are masked with the
same stream position on each rank: every element is dropped with probability p, but the masks
are not the single-process ones, so dropout > 0 under tp > 1 does not reproduce one process
(DTensor's offset-based RNG that would do so is CUDA-only). With dropout 0, runs match.
"""

from plait.tensor_parallel.check import check_tp
from plait.tensor_parallel.loss import loss_context, plain
from plait.tensor_parallel.spec import STYLES

__all__ = ["apply_tp", "check_tp", "loss_context", "plain", "STYLES"]


def __getattr__(name: str):
    # deferred: apply_tp loads torch.distributed.tensor (and sympy), which data-parallel-only
    # runs never need; importing this package stays cheap (start-up)
    if name == "apply_tp":
        from plait.tensor_parallel.apply import apply_tp

        return apply_tp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

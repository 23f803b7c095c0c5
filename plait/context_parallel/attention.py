"""The all-gather attention of context parallel (Llama 3, arXiv 2407.21783 sec. 3.3.2): each
rank keeps its queries (B, H, T/cp, E), all-gathers keys and values over the cp group to the
whole sequence (B, K, T, E), and masks by global positions (causal; a sliding window too). The
gather is torch's autograd-aware functional collective: its backward reduce-scatters the key and
value gradients back to their ranks, so each rank's weight gradient is that of its tokens'
losses, and averaging over dp x cp (FSDP2 / DDP) gives one process's gradient.

Keys and values are gathered before grouped-query heads are repeated (K, not H, heads travel);
with K << H this is what makes all-gather cheaper than gathering queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed._functional_collectives import all_gather_single_autograd

from plait.context_parallel.shard import cp_positions, gathered_positions


class AllGatherAttention:
    """What :func:`plait.context_parallel.apply_cp` hands a model (``plait.parallel_attrs.CP_ATTR``):
    this rank's global positions and the attention over the gathered keys and values."""

    def __init__(self, group, cp_rank: int, cp: int, window: int | None = None):
        self.group, self.cp_rank, self.cp, self.window = group, cp_rank, cp, window

    def positions(self, local_len: int, device=None) -> torch.Tensor:
        """Global positions (T/cp,) of this rank's tokens: the rotary angles' index."""
        return cp_positions(local_len, self.cp_rank, self.cp, device)

    def mask(self, local_len: int, device=None) -> torch.Tensor:
        """Boolean (T/cp, T): query i sees gathered key j where pos_j <= pos_i (and, with a
        sliding window w, pos_i - pos_j < w, as Mistral)."""
        q = self.positions(local_len, device)[:, None]
        k = gathered_positions(local_len, self.cp, device)[None, :]
        keep = k <= q
        if self.window is not None:
            keep &= q - k < self.window
        return keep

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K, T/cp, E) -> (B, K, T, E), chunks in rank order."""
        return all_gather_single_autograd(t.contiguous(), gather_dim=2, group=self.group)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        dropout_p: float = 0.0,
        scale: float | None = None,
    ) -> torch.Tensor:
        """q (B, H, T/cp, E), k and v (B, K, T/cp, E) -> (B, H, T/cp, E)."""
        k, v = self.gather(k), self.gather(v)  # (B, K, T, E)
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:  # grouped-query attention: each kv head serves n_rep query heads
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        mask = self.mask(q.shape[2], q.device)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale
        )

"""Token dispatch and combine of a mixture-of-experts layer: on one rank (:class:`Local`), or
over expert-parallel ranks with two all-to-alls (:class:`ExpertParallel`, GShard's dispatch,
arXiv 2006.16668), with the experts' hidden dimension optionally split over tensor parallel.

Both sort a rank's (token, choice) assignments by expert id, run each expert on its rows, and
sum ``gate * output`` back into the tokens, so one process and every layout compute the same
rows through the same experts (docs/design.md, mixture of experts).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Local:
    """Every expert on this rank."""

    def dispatch_combine(self, x, expert, gates, keep, moe) -> torch.Tensor:
        """x (N, D) tokens; ``expert``/``gates`` (N*k,) each assignment's expert id and gate;
        ``keep`` (N*k,) bool or None -> (N, D) the gated sum of the chosen experts' outputs."""
        token, expert, gates = _assignments(x, expert, gates, keep)
        order = torch.sort(expert, stable=True).indices
        ys = self.experts(moe, x[token[order]], expert[order])
        out = torch.zeros_like(x, dtype=ys.dtype)
        return out.index_add(0, token[order], ys * gates[order, None].to(ys.dtype))

    def experts(self, moe, xs, expert):
        return moe.run_experts(xs, expert)


def _assignments(x, expert, gates, keep):
    k = expert.numel() // x.shape[0]
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
    if keep is not None:  # capacity: dropped assignments contribute nothing
        token, expert, gates = token[keep], expert[keep], gates[keep]
    return token, expert, gates


class _CopyToTP(torch.autograd.Function):
    """Megatron's "f" (arXiv 1909.08053, sec. 3): identity forward, all-reduce backward, for
    the input of the experts' column-split first matmuls."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's "g": all-reduce forward (the row-split w2's partial sums), identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ExpertParallel(Local):
    """This rank holds ``n_local`` experts from ``rank * n_local`` on; ``group`` is the
    expert-parallel group (ranks that exchange tokens), ``tp_group`` (or None) splits each
    expert's hidden dimension. Tokens travel by autograd-aware all-to-all (torch's functional
    ``all_to_all_single_autograd``: its backward is the reverse all-to-all)."""

    def __init__(self, group, n_local: int, tp_group=None):
        self.group, self.n_local, self.tp_group = group, n_local, tp_group
        self.size = dist.get_world_size(group) if group is not None else 1

    def dispatch_combine(self, x, expert, gates, keep, moe) -> torch.Tensor:
        if self.tp_group is not None:
            x = _CopyToTP.apply(x, self.tp_group)
        out = super().dispatch_combine(x, expert, gates, keep, moe)
        if self.tp_group is not None:
            out = _ReduceFromTP.apply(out, self.tp_group)
        return out

    def experts(self, moe, xs, expert):
        if self.size == 1:
            return moe.run_experts(xs, expert)
        # deferred: functional collectives load DTensor machinery, unused without ep
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        P, L = self.size, self.n_local
        counts = torch.bincount(expert, minlength=P * L)  # (P*L,) rows per global expert
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)  # recv[s*L + j]: from s to j
        send_split = counts.view(P, L).sum(1).tolist()
        recv_split = recv.view(P, L).sum(1).tolist()
        xr = all_to_all_single_autograd(xs, recv_split, send_split, self.group)
        # received blocks are [source][local expert]; the experts want [local expert][source]
        rc = recv.view(P, L)
        start = torch.cumsum(rc.flatten(), 0).view(P, L) - rc
        perm = torch.cat(
            [
                torch.arange(int(start[s, j]), int(start[s, j] + rc[s, j]), device=xs.device)
                for j in range(L)
                for s in range(P)
            ]
        )
        local_expert = torch.arange(L, device=xs.device).repeat_interleave(rc.sum(0))
        ye = moe.run_experts(xr[perm], local_expert)
        yr = torch.empty_like(ye).index_copy(0, perm, ye)  # back to [source][local expert]
        return all_to_all_single_autograd(yr, send_split, recv_split, self.group)

"""Mixture-of-experts feed-forward (Shazeer et al., arXiv 1701.06538; Switch, arXiv 2101.03961;
Mixtral, arXiv 2401.04088; DeepSeek-V3, arXiv 2412.19437), written so that every layout routes
the same tokens to the same experts and drops the same ones (docs/design.md, mixture of experts):

- the router runs in fp32 outside autocast, and top-k is a stable sort: on exact ties the
  lower expert index wins, whatever the batch around the token;
- everything that is a function of several tokens is per *sequence* (a sequence never splits
  over data-parallel ranks): the capacity limit (``capacity_factor`` > 0: at most
  ceil(cf * T * k / E) tokens of a sequence per expert, later positions dropped first) and the
  sequence-wise balance loss of DeepSeek-V3 (eq. 17-20);
- the auxiliary-loss-free balancing bias (DeepSeek-V3 sec. 2.1.2) changes selection only, and
  is updated once per optimizer step from the step's global token counts per expert.

Experts are one (E, D, H) tensor per weight, so expert parallel shards dim 0 and tensor parallel
dim H (plait.expert_parallel). Token dispatch to experts on other ranks: plait.models.moe_comm.

Shapes: N tokens, D dim, E experts (L local under expert parallel), H expert hidden, k top-k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from plait.models import moe_comm


@dataclass(frozen=True)
class MoEArgs:
    n_experts: int
    top_k: int
    expert_dim: int  # H: each routed (and shared) expert's SwiGLU width
    n_shared: int = 0  # shared experts, always on, fused into one SwiGLU of n_shared * H
    score: Literal["softmax", "sigmoid"] = "softmax"
    route_scale: float = 1.0
    aux_loss: float = 0.0  # alpha of the sequence-wise balance loss; 0: off
    bias_update: float = 0.0  # gamma of the aux-loss-free bias; 0: off
    capacity_factor: float = 0.0  # 0: dropless
    first_dense: int = 0  # the first n blocks keep a dense feed-forward (DeepSeek-V3: 3)


class AuxLossGrad(torch.autograd.Function):
    """Identity on ``x`` whose backward also sends ``scale`` into ``aux``: the balance loss
    gets its gradient without travelling with the output (under a pipeline only the last stage
    sees the loss). Megatron-core's MoEAuxLossAutoScaler does the same."""

    @staticmethod
    def forward(ctx, x, aux, scale: float):
        ctx.scale = scale
        ctx.save_for_backward(aux)
        return x

    @staticmethod
    def backward(ctx, grad):
        (aux,) = ctx.saved_tensors
        return grad, torch.full_like(aux, ctx.scale), None


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Router(nn.Module):
    def __init__(self, dim: int, m: MoEArgs):
        super().__init__()
        self.m = m
        self.gate = nn.Linear(dim, m.n_experts, bias=False)
        # persistent: the balancing bias is training state, checkpointed with the weights
        self.register_buffer("expert_bias", torch.zeros(m.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> expert ids (N, k), gates (N, k), scores (N, E) in fp32."""
        with torch.autocast(x.device.type, enabled=False):
            logits = self.gate(x.float())  # (N, E)
        scores = logits.softmax(-1) if self.m.score == "softmax" else logits.sigmoid()
        pick = scores.detach() + self.expert_bias  # the bias steers selection only
        order = torch.sort(pick, dim=-1, descending=True, stable=True).indices
        idx = order[:, : self.m.top_k]  # (N, k)
        gates = scores.gather(-1, idx)
        if self.m.score == "sigmoid":  # DeepSeek-V3: normalise over the chosen experts
            gates = gates / gates.sum(-1, keepdim=True)
        return idx, gates * self.m.route_scale, scores


class Experts(nn.Module):
    """E SwiGLU experts as three stacked weights; under expert parallel this rank holds the
    ``L`` experts from ``first`` on (plait.expert_parallel)."""

    def __init__(self, dim: int, m: MoEArgs):
        super().__init__()
        E, H = m.n_experts, m.expert_dim
        self.w1 = nn.Parameter(torch.empty(E, dim, H))
        self.w3 = nn.Parameter(torch.empty(E, dim, H))
        self.w2 = nn.Parameter(torch.empty(E, H, dim))
        self.shards: dict = {}  # weight name -> ExpertShard, when split (plait.expert_parallel)

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x (M, D) grouped by local expert, ``counts`` rows each -> (M, D). A loop of plain
        matmuls: one per expert (torch's grouped_mm is CUDA-only in 2.13)."""
        out = [
            (F.silu(xs @ self.w1[j]) * (xs @ self.w3[j])) @ self.w2[j]
            for j, xs in enumerate(x.split(counts))
        ]
        return torch.cat(out) if out else x[:0]


class MoE(nn.Module):
    def __init__(self, dim: int, m: MoEArgs):
        super().__init__()
        self.m = m
        self.router = Router(dim, m)
        self.experts = Experts(dim, m)
        self.shared_experts = SwiGLU(dim, m.n_shared * m.expert_dim) if m.n_shared else None
        self.comm = moe_comm.Local()  # replaced by plait.expert_parallel (ep / tp groups)
        self.loss_scale = 0.0  # the trainer's loss scale, for the balance loss (set per step)
        self.tokens_per_expert: torch.Tensor | None = None  # this step's counts (bias update)
        # set by plait.expert_parallel: experts split (their gradients reduced here, over
        # grad_group, divided by grad_div), and the group of every data-parallel rank
        self.sharded, self.grad_group, self.grad_div, self.count_group = False, None, 1.0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # under tensor parallel the normed input arrives as a replicated DTensor: the router
        # and the experts take the local copy (whole tokens on every tp rank)
        local = x.to_local() if hasattr(x, "to_local") else x
        flat = local.reshape(-1, D)  # (N, D)
        idx, gates, scores = self.router(flat)
        keep = self._keep(idx.view(B, T, -1))  # (N*k,) bool, or None: dropless
        if self.training and self.m.bias_update > 0:
            c = torch.bincount(idx.flatten(), minlength=self.m.n_experts).float()
            self.tokens_per_expert = (
                c if self.tokens_per_expert is None else self.tokens_per_expert + c
            )
        y = self.comm.dispatch_combine(flat, idx.flatten(), gates.flatten(), keep, self)
        y = y.view(B, T, D).to(local.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        if self.training and self.m.aux_loss > 0 and self.loss_scale:
            aux = self._balance_loss(idx.view(B, T, -1), scores.view(B, T, -1))
            y = AuxLossGrad.apply(y, aux, self.loss_scale * T * self.m.aux_loss)
        return y

    @torch.no_grad()
    def finish_step(self) -> None:
        """After the step's last backward: split experts' gradients summed over the ranks
        holding the same experts (the loss scale's dp x cp undone); the balancing bias moved
        by gamma * sign(mean - count) from the step's global counts (DeepSeek-V3 sec. 2.1.2)."""
        if self.sharded:
            grads = [p.grad for p in self.experts.parameters() if p.grad is not None]
            if grads:
                flat = torch.cat([t.flatten() for t in grads])
                if self.grad_group is not None:
                    dist.all_reduce(flat, group=self.grad_group)
                flat /= self.grad_div
                for t, v in zip(grads, flat.split([t.numel() for t in grads])):
                    t.copy_(v.view_as(t))
        c, self.tokens_per_expert = self.tokens_per_expert, None
        if c is not None:
            if self.count_group is not None:
                dist.all_reduce(c, group=self.count_group)
            self.router.expert_bias += self.m.bias_update * torch.sign(c.mean() - c)

    def run_experts(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """x (M, D) rows sorted by (local) expert id ``expert`` (M,) -> expert outputs (M, D)."""
        counts = torch.bincount(expert, minlength=self.experts.w1.shape[0]).tolist()
        return self.experts(x, counts)

    def _keep(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Capacity per sequence: an assignment survives when fewer than ``cap`` earlier ones of
        its sequence chose the same expert (positions in order, then the k choices)."""
        if self.m.capacity_factor <= 0:
            return None
        B, T, k = idx.shape
        cap = math.ceil(self.m.capacity_factor * T * k / self.m.n_experts)
        onehot = F.one_hot(idx.reshape(B, T * k), self.m.n_experts)  # (B, T*k, E)
        rank = (onehot.cumsum(1) * onehot).sum(-1) - 1  # earlier picks of the same expert
        return (rank < cap).flatten()

    def _balance_loss(self, idx: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Sum over sequences of DeepSeek-V3's sequence-wise loss sum_i f_i P_i (eq. 17-20)."""
        B, T, k = idx.shape
        E = self.m.n_experts
        f = F.one_hot(idx, E).sum((1, 2)).float() * (E / (k * T))  # (B, E)
        norm = scores / scores.sum(-1, keepdim=True)  # (B, T, E)
        return (f * norm.mean(1)).sum()


def moe_params(dim: int, m: MoEArgs, *, active: bool) -> int:
    """Parameters of one MoE feed-forward (all experts, or those one token uses)."""
    n = m.top_k if active else m.n_experts
    return dim * m.n_experts + 3 * dim * m.expert_dim * (n + m.n_shared)

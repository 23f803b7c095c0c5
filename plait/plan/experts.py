"""Mixture of experts in the planner: expert parameters per expert-parallel rank, the bytes its
all-to-alls move, and the router's imbalance as a stated assumption (docs/design.md, expert
parallel; the all-to-all volume is measured against :func:`a2a_bytes_per_layer` by
bench/ep_comm.py).

Per MoE layer and micro-batch, a rank sends each of its ``N x k`` (token, expert) rows once to
the rank holding that expert (dispatch) and gets the output back (combine); backward repeats
both with gradients: 4 all-to-alls of ``N x k x D`` elements. Under uniform routing a fraction
``(ep - 1) / ep`` of them leaves the rank; a router that sends ``imbalance`` times the mean load
to its busiest expert makes that expert's rank compute and receive ``imbalance`` times more.
"""

from __future__ import annotations

from dataclasses import dataclass

#: assumed max / mean tokens per expert (1.0: perfectly balanced, what the aux-loss-free bias
#: and the balance loss aim at); stated in the report, not measured
IMBALANCE = 1.0


@dataclass(frozen=True)
class ExpertPlan:
    n_moe_layers: int
    experts_per_rank: int
    expert_params_per_rank: int  # routed experts' weights one ep x tp rank holds (its stage)
    a2a_bytes_per_layer: float  # all-to-all payload one rank sends per MoE layer per step
    off_rank_fraction: float  # share of it that leaves the rank (uniform routing)
    imbalance: float

    def lines(self) -> list[str]:
        mib = self.a2a_bytes_per_layer / 2**20
        return [
            f"experts  {self.experts_per_rank} per ep rank, "
            f"{self.expert_params_per_rank / 1e6:,.1f}M expert params per rank "
            f"({self.n_moe_layers} MoE layers)",
            f"all2all  {mib:,.2f} MiB per MoE layer per step per rank "
            f"({self.off_rank_fraction:.0%} off-rank under uniform routing)",
            f"assumes  router imbalance {self.imbalance:.2f} (busiest expert / mean load); "
            "the busiest ep rank computes and receives that much more",
        ]


def a2a_bytes_per_layer(tokens: int, top_k: int, dim: int, act_bytes: int) -> float:
    """All-to-all payload one rank sends per MoE layer for ``tokens`` local tokens in one
    forward + backward: dispatch and combine, each again in backward (dropless)."""
    return 4.0 * tokens * top_k * dim * act_bytes


def plan_experts(
    *, n_experts: int, top_k: int, expert_dim: int, dim: int, n_moe_layers: int, ep: int,
    tp: int, pp: int, local_tokens: int, act_bytes: int, imbalance: float = IMBALANCE,
) -> ExpertPlan:  # fmt: skip
    """``local_tokens``: tokens one rank runs per step (its batch x sequence, over cp)."""
    per_rank = n_experts // ep
    layers = -(-n_moe_layers // pp)  # the busiest stage's
    params = layers * per_rank * 3 * dim * expert_dim // tp
    a2a = a2a_bytes_per_layer(local_tokens, top_k, dim, act_bytes) if ep > 1 else 0.0
    return ExpertPlan(layers, per_rank, params, a2a, (ep - 1) / ep, imbalance)


def experts_from_config(cfg, layout, job) -> ExpertPlan | None:
    """The plan of a gpt mixture-of-experts config (None: a dense model)."""
    if cfg.model.name != "gpt":
        return None
    from plait.models.gpt import gpt_args  # deferred: the model zoo loads torch

    a = gpt_args(cfg)
    if a.moe is None:
        return None
    m = a.moe
    local_tokens = job.tokens // (layout.dp * layout.cp)
    return plan_experts(
        n_experts=m.n_experts, top_k=m.top_k, expert_dim=m.expert_dim, dim=a.dim,
        n_moe_layers=a.n_layers - min(m.first_dense, a.n_layers), ep=cfg.parallel.ep,
        tp=layout.tp, pp=layout.pp, local_tokens=local_tokens, act_bytes=job.act_bytes,
    )  # fmt: skip

"""Alpha-beta costs of collectives (Hockney's model; ring algorithms as in NCCL, Thakur et al.
2005 "Optimization of collective communication operations in MPICH").

A link is (alpha_s, bytes_per_s). ``size`` is the full buffer in bytes (the all-gathered or
all-reduced tensor, not one rank's shard)."""

from __future__ import annotations

Link = tuple[float, float]


def all_reduce(size: float, n: int, link: Link) -> float:
    """Ring all-reduce: reduce-scatter then all-gather, 2(n-1) steps moving 2(n-1)/n·S."""
    if n <= 1:
        return 0.0
    alpha, beta = link
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta


def reduce_scatter(size: float, n: int, link: Link) -> float:
    """Ring reduce-scatter: n-1 steps moving (n-1)/n·S; all-gather costs the same."""
    if n <= 1:
        return 0.0
    alpha, beta = link
    return (n - 1) * alpha + (n - 1) / n * size / beta


all_gather = reduce_scatter


def p2p(size: float, link: Link) -> float:
    """One send/recv between neighbouring pipeline ranks."""
    alpha, beta = link
    return alpha + size / beta

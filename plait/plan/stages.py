"""What each pipeline rank holds: its blocks, and whether it owns the embedding and the head.

The cuts are plait's own (plait.pipeline.split): ``parallel.pp_cuts`` when given, else the
balanced split by ``parallel.pp_balance`` (parameters, or forward FLOPs per token), and the
stages placed on ranks as the schedule places them (loop or V), so the plan prices the stage
sizes the run will have.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from plait.pipeline.split import balanced_cuts, stage_blocks, stage_ids
from plait.plan.shapes import Layout, ModelShape


@dataclass(frozen=True)
class RankPart:
    rank: int
    blocks: int
    embed: bool
    head: bool

    def params(self, shape: ModelShape) -> int:
        """Parameters of this pipeline rank before TP/ZeRO sharding."""
        return (
            self.blocks * shape.block_params
            + (shape.embed_params if self.embed else 0)
            + (shape.head_params if self.head else 0)
        )


def stage_cuts(shape: ModelShape, layout: Layout, seq_len: int = 0) -> list[int]:
    """First block of every stage after the first: the layout's own, or balanced."""
    n_stages = layout.pp * layout.v
    if layout.pp_cuts:
        return list(layout.pp_cuts)
    return list(_balanced(shape, n_stages, layout.pp_balance, seq_len))


@functools.lru_cache(maxsize=256)
def _balanced(shape: ModelShape, n_stages: int, balance: str, seq_len: int) -> tuple[int, ...]:
    if balance == "flops":  # forward FLOPs per token, as plait.models' block_flops counts them
        block = 2 * shape.block_params + 4 * shape.dim * seq_len
        pre, post = 0.0, 2.0 * shape.head_matmul_params
    else:
        block, pre, post = shape.block_params, shape.embed_params, shape.head_params
    return tuple(balanced_cuts([float(block)] * shape.n_layers, pre, post, n_stages))


def rank_parts(shape: ModelShape, layout: Layout, seq_len: int = 0) -> list[RankPart]:
    """Every pipeline rank's share (one rank without pipeline parallel)."""
    p = layout.pp
    if p == 1:
        return [RankPart(0, shape.n_layers, True, True)]
    n_stages = p * layout.v
    cuts = stage_cuts(shape, layout, seq_len)
    parts = []
    for r in range(p):
        ids = stage_ids(layout.schedule, r, p, layout.v)
        blocks = sum(len(stage_blocks(cuts, shape.n_layers, s)) for s in ids)
        parts.append(RankPart(r, blocks, 0 in ids, n_stages - 1 in ids))
    return parts

"""What one pipeline rank holds: its blocks, and whether it owns the embedding and the head."""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.plan.shapes import Layout, ModelShape
from plait.rules import schedule


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


def rank_parts(shape: ModelShape, layout: Layout) -> list[RankPart]:
    """The first and the last pipeline rank (the two that can be heaviest), each holding
    ceil(L / p) blocks (chunks balanced over ranks; an upper bound when p does not divide L)."""
    p = layout.pp
    blocks = math.ceil(shape.n_layers / p)
    if p == 1:
        return [RankPart(0, shape.n_layers, True, True)]
    if schedule(layout.schedule).v_shape:  # first and last chunk both on rank 0
        return [RankPart(0, blocks, True, True), RankPart(p - 1, blocks, False, False)]
    return [RankPart(0, blocks, True, False), RankPart(p - 1, blocks, False, True)]

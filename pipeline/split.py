"""Cutting a model into pipeline stages along its ordered ``layers``.

A stage is the whole model with the blocks it does not own deleted and, unless it is the first
(last) stage, its pre (post) modules set to None; ``layers`` is a ModuleDict keyed by the
block's global index, so every parameter keeps its single-process name and
``init_weights(seed)`` gives the same values on any layout (torchtitan's trick).

Stage placement on ranks (``stage_ids``): loop style (rank r holds r, r+p, r+2p, ...) for
GPipe / 1F1B / Interleaved1F1B / LoopedBFS / InterleavedZeroBubble; V style (rank r holds r
and 2p-1-r) for ZBVZeroBubble and DualPipeV, so rank 0 holds both the first and last stage.
"""

from __future__ import annotations

import copy

from torch import nn

from plait import rules
from plait.config import Config
from plait.models.base import PlaitModel, matmul_flops


def style(schedule: str) -> str:
    """How stages map to ranks: ``v`` (plait.rules: V-shaped) or ``loop``."""
    return "v" if rules.schedule(schedule).v_shape else "loop"


def stage_ids(schedule: str, pp_rank: int, pp: int, v: int) -> list[int]:
    """Global stage indices this pipeline rank holds, in execution order."""
    if style(schedule) == "v":
        assert v == 2, "V schedules hold exactly 2 stages per rank"
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(v)]


def stage_rank(schedule: str, stage: int, pp: int) -> int:
    """Pipeline rank that holds global stage ``stage``."""
    if style(schedule) == "v":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def block_costs(model: PlaitModel, balance: str, seq_len: int) -> tuple[list[float], float, float]:
    """Per-block cost and the cost of the pre / post modules, by parameter count or by forward
    FLOPs per sample-or-token (the model's ``block_flops``; pre / post: their matmuls)."""

    def cost(mod: nn.Module | None, block: bool = False) -> float:
        if mod is None:
            return 0.0
        if balance == "params":
            return float(sum(p.numel() for p in mod.parameters()))
        return model.block_flops(mod, seq_len) if block else matmul_flops(mod)

    blocks = [cost(b, block=True) for b in model.layers.values()]
    pre = sum(cost(getattr(model, n)) for n in model.pre_modules())
    post = sum(cost(getattr(model, n)) for n in model.post_modules())
    return blocks, pre, post


def balanced_cuts(blocks: list[float], pre: float, post: float, n_stages: int) -> list[int]:
    """Start block of stages 1..S-1 minimising the most expensive stage (exact DP over
    contiguous splits; pre-modules count on stage 0, post-modules on the last)."""
    n = len(blocks)
    prefix = [0.0]
    for c in blocks:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[s][j]: minimal max-cost of splitting blocks[:j] into s stages (each >= 1 block)
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    arg = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0.0
    for s in range(1, n_stages + 1):
        for j in range(s, n - (n_stages - s) + 1):
            for i in range(s - 1, j):
                c = prefix[j] - prefix[i] + (pre if s == 1 else 0.0)
                c += post if s == n_stages else 0.0
                val = max(best[s - 1][i], c)
                if val < best[s][j] - 1e-9:
                    best[s][j], arg[s][j] = val, i
    cuts, j = [], n
    for s in range(n_stages, 1, -1):
        j = arg[s][j]
        cuts.append(j)
    return sorted(cuts)


def stage_blocks(cuts: list[int], n_blocks: int, stage: int) -> range:
    bounds = [0, *cuts, n_blocks]
    return range(bounds[stage], bounds[stage + 1])


def build_stage(model: PlaitModel, stage: int, n_stages: int, cuts: list[int]) -> PlaitModel:
    """A copy of the (meta) model holding only what stage ``stage`` owns; names unchanged."""
    part = copy.deepcopy(model)
    keep = {str(i) for i in stage_blocks(cuts, len(model.layers), stage)}
    for key in list(part.layers.keys()):
        if key not in keep:
            del part.layers[key]
    if stage != 0:
        for name in part.pre_modules():
            setattr(part, name, None)
    if stage != n_stages - 1:
        for name in part.post_modules():
            setattr(part, name, None)
    return part


class PipelineParts(nn.ModuleList):
    """This rank's stage modules (plain PlaitModels with single-process names), in the order
    of ``stage_ids``."""

    def __init__(self, modules: list[PlaitModel], stage_ids: list[int], n_stages: int):
        super().__init__(modules)
        self.stage_ids, self.n_stages = stage_ids, n_stages


def stage_cuts(model: PlaitModel, cfg: Config, n_stages: int) -> list[int]:
    """The configured cut points, or balanced ones (``parallel.pp_balance``)."""
    p = cfg.parallel
    if p.pp_cuts:
        return list(p.pp_cuts)
    return balanced_cuts(*block_costs(model, p.pp_balance, cfg.data.seq_len), n_stages)


def split_model(model: PlaitModel, cfg: Config, pp_rank: int) -> PipelineParts:
    """This pipeline rank's stages of a (meta) model."""
    p = cfg.parallel
    n_stages = p.pp * p.pp_virtual_stages
    cuts = stage_cuts(model, cfg, n_stages)
    ids = stage_ids(p.pp_schedule, pp_rank, p.pp, p.pp_virtual_stages)
    return PipelineParts([build_stage(model, s, n_stages, cuts) for s in ids], ids, n_stages)

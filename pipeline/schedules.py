"""Schedule names -> torch.distributed.pipelining classes, and the per-rank action order each
schedule produces, obtained without processes by instantiating torch's own schedule on mock
stages (the same trick as torch's ``_schedule_visualizer``). Validation uses it too, so what we
accept is exactly what torch accepts."""

from __future__ import annotations

from functools import lru_cache
from unittest import mock

from plait import rules

SCHEDULES = tuple(rules.SCHEDULES)  # one list of names: plait.rules' table


def schedule_class(name: str):
    # deferred (here and below): torch.distributed.pipelining only once a pipeline is checked,
    # simulated or run, so data-parallel runs and plait plan start without it
    from torch.distributed.pipelining.schedules import get_schedule_class

    return get_schedule_class(name)


def allowed_virtual(name: str) -> tuple[int, ...] | None:
    """Stages per rank a schedule allows: exactly (1,) or (2,), or None for any >= 1."""
    return rules.schedule(name).stages_per_rank


@lru_cache(maxsize=256)
def action_order(
    name: str, pp: int, v: int, m: int
) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    """Per rank, the compute actions (kind, stage, microbatch) in the order torch runs them;
    kind is F (forward), B (full backward), I (backward for inputs) or W (backward for weights).
    Raises ValueError when torch refuses (pp, v, m) for this schedule."""
    # deferred: torch.distributed.pipelining (see schedule_class)
    from torch.distributed.pipelining.schedules import PipelineScheduleSingle
    from torch.distributed.pipelining.stage import PipelineStage

    cls = schedule_class(name)
    if issubclass(cls, PipelineScheduleSingle) and v != 1:
        raise ValueError(f"{name} runs exactly 1 stage per rank, got {v}")
    stage = mock.create_autospec(PipelineStage, instance=True)
    stage.group_rank, stage.group_size, stage.submod = 0, pp, None
    stage.num_stages = pp * v
    stages = stage if issubclass(cls, PipelineScheduleSingle) else [stage] * v
    order = cls(stages, m).pipeline_order  # raises where torch refuses (pp, v, m)
    if issubclass(cls, PipelineScheduleSingle):
        # torch 2.13's pipeline_order of single-stage schedules is for display only (and off by
        # one on the last rank); this is the order their step() really runs.
        return tuple(_single_order(name, r, pp, m) for r in range(pp))

    def flat(acts):  # DualPipeV's OVERLAP_F_B holds a forward and a backward: run in order
        for a in acts:
            if a is not None and a.sub_actions:
                yield from flat(a.sub_actions)
            elif a is not None and a.computation_type.value in ("F", "B", "I", "W"):
                yield (a.computation_type.value, a.stage_index, a.microbatch_index)

    return tuple(tuple(flat(order[rank])) for rank in range(pp))


def microbatch_problem(name: str, pp: int, v: int, m: int) -> str | None:
    """torch's reason for refusing ``m`` microbatches, or None when it is accepted."""
    try:
        action_order(name, pp, v, m)
    except (ValueError, AssertionError, RuntimeError) as e:
        return str(e).replace("\\\n", "").strip() or type(e).__name__
    return None


def valid_microbatches(name: str, pp: int, v: int, upto: int) -> list[int]:
    return [m for m in range(1, upto + 1) if microbatch_problem(name, pp, v, m) is None]


def _single_order(name: str, r: int, pp: int, m: int) -> tuple[tuple[str, int, int], ...]:
    if name == "GPipe":
        return tuple([("F", r, i) for i in range(m)] + [("B", r, i) for i in range(m)])
    warm = min(m, pp - r)  # Schedule1F1B: warm-up forwards, then (B, F) pairs, then the B's
    acts = [("F", r, i) for i in range(warm)]
    for i in range(m):
        acts.append(("B", r, i))
        if warm + i < m:
            acts.append(("F", r, warm + i))
    return tuple(acts)

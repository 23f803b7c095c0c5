"""Pipeline schedules in closed form: the idle fraction of a step and the micro-batches whose
activations the first rank holds at once.

The closed forms assume equal forward (F), input-backward (B) and weight-backward (W) times,
as the papers' own formulas do. The bubble is checked against plait.pipeline.simulate laying
out the action orders torch 2.13 really runs (tests/test_plan.py, every schedule over a grid of
p, v, m); where no closed form holds (V schedules with few micro-batches) it is simulated.
"""

from __future__ import annotations

import contextlib
import functools

from plait import rules
from plait.pipeline.simulate import simulate

SCHEDULES = tuple(rules.SCHEDULES)  # one list of names: plait.rules' table


def bubble_ratio(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Idle time over useful time of the slowest rank.

    GPipe (arXiv 1811.06965) and 1F1B (PipeDream-Flush, arXiv 2006.09503): (p-1)/m.
    Interleaved 1F1B and looped BFS with v stages per rank (arXiv 2104.04473 sec. 2.2.2,
    arXiv 2211.05953): (p-1)/(v·m).
    InterleavedZeroBubble (ZB-H1, arXiv 2401.10241 sec. 3): the 1F1B bubble
    (p-1)(F+B+W) shrinks to (p-1)(F+B-W), one third with F=B=W, divided by v.
    ZBVZeroBubble (ZB-V, arXiv 2401.10241 sec. 6) and DualPipeV (DeepSeek-V3, arXiv
    2412.19437 table 2) are bubble-free on paper when F=B=W, but torch's orders of them leave
    ZB-H1's (p-1)/(3·v·m) once m >= 3p/2 (simulated); below that the simulator's figure.
    """
    if p <= 1:
        return 0.0
    s = rules.schedule(schedule)  # raises for an unknown name
    if s.single:
        return (p - 1) / m
    if not s.zero_bubble:
        return (p - 1) / (v * m)
    if s.v_shape and 2 * m < 3 * p:
        return _simulated_ratio(schedule, p, m, v)
    return (p - 1) / (3 * v * m)


@functools.lru_cache(maxsize=256)
def _simulated_ratio(schedule: str, p: int, m: int, v: int) -> float:
    f = simulate(schedule, p, m, v).bubble
    return f / (1 - f)


def bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Idle share of the step: (p-1)/(m+p-1) for 1F1B, (p-1)/(v·m+p-1) interleaved."""
    r = bubble_ratio(schedule, p, m, v)
    return r / (1 + r)


#: irregular pipelines (m not a multiple of p, or m < 2p) up to this many ranks x stages x
#: micro-batches are simulated (milliseconds each); the closed forms hold for the regular ones
SIMULATE_UP_TO = 512


def inflight_microbatches(schedule: str, p: int, m: int, v: int = 1, rank: int = 0) -> float:
    """Micro-batches' activations pipeline ``rank`` holds at its peak, in units of one
    micro-batch through all of that rank's layers (a stage's activations count from its
    forward until its full backward, or its weight pass for split backwards).

    Closed forms where m is a multiple of p and m >= 2p (checked against the simulator);
    otherwise simulated on torch's own action order (plait.pipeline.simulate). Closed forms: GPipe and looped BFS keep
    every micro-batch (m); 1F1B p - rank (arXiv 2104.04473); Interleaved 1F1B Megatron's
    warm-up of 2(p-rank-1) + (v-1)p + 1 chunks of 1/v of the layers (arXiv 2205.05198 sec.
    4.2.3); ZB-V 1F1B's p (arXiv 2401.10241 sec. 6). Torch's InterleavedZeroBubble holds p on
    every rank and its DualPipeV p + 1/v (simulated; the DualPipe paper's p + 1 is per pair
    of chunks, arXiv 2412.19437 table 2).
    """
    if p <= 1:
        return 1.0
    regular = m % p == 0 and m >= 2 * p
    if not regular and p * v * m <= SIMULATE_UP_TO:
        with contextlib.suppress(ValueError):  # a (p, v, m) torch refuses: the formula's figure
            return _simulated_peaks(schedule, p, m, v)[rank]
    return closed_inflight(schedule, p, m, v, rank)


@functools.lru_cache(maxsize=256)
def _simulated_peaks(schedule: str, p: int, m: int, v: int) -> tuple[float, ...]:
    sim = simulate(schedule, p, m, v)
    return tuple(sim.peak_inflight(r) for r in range(p))


def closed_inflight(schedule: str, p: int, m: int, v: int = 1, rank: int = 0) -> float:
    """The closed forms of :func:`inflight_microbatches` (m a multiple of p, m >= 2p)."""
    if rules.schedule(schedule).breadth_first:
        return float(m)
    if schedule == "1F1B":
        return float(min(m, p - rank))
    if schedule == "Interleaved1F1B":
        chunks = 2 * (p - rank - 1) + (v - 1) * p + 1
        return min(float(m), chunks / v)
    if schedule in ("ZBVZeroBubble", "InterleavedZeroBubble"):
        return float(min(m, p))
    if schedule == "DualPipeV":
        return min(float(m), p + 1 / v)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")

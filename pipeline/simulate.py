"""Pipeline schedule simulator: pure code, no processes.

Each rank runs its actions in the order torch's schedule gives it
(:func:`plait.pipeline.schedules.action_order`), each as early as its dependencies allow:
F(s, i) after F(s-1, i); B or I(s, i) after F(s, i) and B/I(s+1, i); W(s, i) after I(s, i);
plus the send/recv time when the neighbouring stage lives on another rank. The result is each
rank's timeline, the step time and the bubble fraction (idle share of ranks x step time).

Besides torch's schedules, ``ZB-H1`` (Qi et al., arXiv 2401.10241, sec. 3; not in torch) is
1F1B with the backward split and rank r's weight gradients postponed by r microbatches, so
the input-gradient chain runs back at I per hop instead of I + W; with F = I = W its bubble is
(p-1)(F+I-W), a third of 1F1B's (p-1)(F+I+W).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from plait.pipeline.schedules import action_order
from plait.pipeline.split import stage_rank
from plait.pipeline.timeline import Event, bubble_fraction, plot_timeline

SIM_ONLY = ("ZB-H1",)


@dataclass(frozen=True)
class Costs:
    """Per-microbatch times of one rank's whole share of the model (its v stages split it
    evenly): forward, backward for inputs, backward for weights, and one send/recv."""

    forward: float = 1.0
    backward_input: float = 1.0
    backward_weight: float = 1.0
    comm: float = 0.0


@dataclass
class Simulation:
    schedule: str
    pp: int
    v: int
    m: int
    events: list[Event] = field(default_factory=list)

    @property
    def step_time(self) -> float:
        return max(e[5] for e in self.events) - min(e[4] for e in self.events)

    @property
    def bubble(self) -> float:
        return bubble_fraction(self.events)

    def peak_inflight(self, rank: int) -> float:
        """Most micro-batches whose activations ``rank`` holds at once, in units of one
        micro-batch through all its stages: a stage's activations live from its F until its
        full backward B or, for split backwards, its weight pass W (which needs the layer
        inputs; the input pass I alone frees little)."""
        held = peak = 0.0
        for _, kind, *_ in sorted((e for e in self.events if e[0] == rank), key=lambda e: e[4]):
            held += 1 / self.v if kind == "F" else -1 / self.v if kind in ("B", "W") else 0.0
            peak = max(peak, held)
        return peak

    def plot(self, png: str) -> None:
        plot_timeline(
            self.events, png, f"{self.schedule} (simulated) p={self.pp} v={self.v} m={self.m}"
        )


def _orders(schedule: str, pp: int, v: int, m: int) -> list[list[tuple[str, int, int]]]:
    if schedule == "ZB-H1":  # 1F1B with rank r's W's postponed by r microbatches
        out = []
        for r in range(pp):
            warm, k = min(pp - 1 - r, m), r
            acts = [("F", r, i) for i in range(warm)]
            w = 0
            for j in range(m):
                if warm + j < m:
                    acts.append(("F", r, warm + j))
                acts.append(("I", r, j))
                if j >= k:
                    acts.append(("W", r, w))
                    w += 1
            acts += [("W", r, i) for i in range(w, m)]
            out.append(acts)
        return out
    return [list(a) for a in action_order(schedule, pp, v, m)]


def simulate(schedule: str, pp: int, m: int, v: int = 1, costs: Costs = Costs()) -> Simulation:
    """Lay out every rank's actions for ``schedule`` with ``pp`` ranks, ``v`` stages per rank
    and ``m`` microbatches."""
    S = pp * v
    rank_of = "1F1B" if schedule in SIM_ONLY else schedule
    dur = {
        "F": costs.forward / v,
        "I": costs.backward_input / v,
        "W": costs.backward_weight / v,
        "B": (costs.backward_input + costs.backward_weight) / v,
    }
    orders = _orders(schedule, pp, v, m)
    done: dict[tuple[str, int, int], float] = {}  # (F|G|W, stage, mb) -> end; G: input grad
    pos, free = [0] * pp, [0.0] * pp
    sim = Simulation(schedule, pp, v, m)

    def hop(a: int, b: int) -> float:
        return costs.comm if stage_rank(rank_of, a, pp) != stage_rank(rank_of, b, pp) else 0.0

    def ready(kind: str, s: int, i: int) -> float | None:
        deps = []
        if kind == "F" and s > 0:
            deps.append((("F", s - 1, i), hop(s - 1, s)))
        if kind in ("B", "I"):
            deps.append((("F", s, i), 0.0))
            if s < S - 1:
                deps.append((("G", s + 1, i), hop(s + 1, s)))
        if kind == "W":
            deps.append((("G", s, i), 0.0))
        t = 0.0
        for key, lag in deps:
            if key not in done:
                return None
            t = max(t, done[key] + lag)
        return t

    for _ in range(sum(len(o) for o in orders)):
        # list scheduling: of the ranks whose next action has its inputs, the earliest start
        best = None
        for r in range(pp):
            if pos[r] < len(orders[r]) and (t := ready(*orders[r][pos[r]])) is not None:
                if best is None or max(t, free[r]) < best[0]:
                    best = (max(t, free[r]), r)
        if best is None:
            raise RuntimeError(f"{schedule}: simulation deadlocked (p={pp}, v={v}, m={m})")
        start, r = best
        kind, s, i = orders[r][pos[r]]
        end = start + dur[kind]
        pos[r] += 1
        done[(kind, s, i)] = end
        if kind in ("B", "I"):
            done[("G", s, i)] = end
        free[r] = end
        sim.events.append((r, kind, s, i, start, end))
    return sim


def mean_costs(events: list[Event], v: int):
    """Per-microbatch costs of one rank's share (v stages) from measured actions: forward,
    backward-input and backward-weight means (a full backward counts as input + weight, split
    evenly when the schedule never splits it)."""

    def mean(kind: str) -> float | None:
        d = [e[5] - e[4] for e in events if e[1] == kind]
        return sum(d) / len(d) if d else None

    f, b, i, w = mean("F"), mean("B"), mean("I"), mean("W")
    if i is None or w is None:
        i = w = (b or 0.0) / 2
    return Costs(forward=(f or 0.0) * v, backward_input=i * v, backward_weight=w * v, comm=0.0)


def write_measured(events: list[Event], run_dir, schedule: str, pp: int, v: int, m: int) -> dict:
    """pp_timeline.json (events, measured and simulated bubble) and the two pictures."""
    run_dir = Path(run_dir)
    costs = mean_costs(events, v)
    sim = simulate(schedule, pp, m, v=v, costs=costs)
    t0 = min(e[4] for e in events)
    info = {
        "schedule": schedule, "pp": pp, "virtual_stages": v, "microbatches": m,
        "measured_bubble": bubble_fraction(events), "simulated_bubble": sim.bubble,
        "measured_step_s": max(e[5] for e in events) - t0, "simulated_step_s": sim.step_time,
        "costs_s": costs.__dict__,
        "events": [[r, k, s, i, a - t0, b - t0] for r, k, s, i, a, b in events],
    }  # fmt: skip
    (run_dir / "pp_timeline.json").write_text(json.dumps(info) + "\n")
    plot_timeline(
        events, str(run_dir / "pp_timeline.png"), f"{schedule} (measured) p={pp} v={v} m={m}"
    )
    sim.plot(str(run_dir / "pp_timeline_sim.png"))
    return info

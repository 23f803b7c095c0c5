"""``plait pp-timeline``: the pipeline timeline of a config, simulated (pure code, no
processes) or measured (a run made with ``log.pp_timeline=true``)."""

from __future__ import annotations

import json
from pathlib import Path

from plait.config import load_config
from plait.errors import PlaitError
from plait.pipeline.schedules import microbatch_problem
from plait.pipeline.simulate import Costs, simulate
from plait.pipeline.timeline import plot_timeline


def pp_timeline(
    config: str | None, overrides: list[str], png: str, costs: str, run: str | None
) -> str:

    if run:
        path = Path(run) / "pp_timeline.json"
        if not path.exists():
            raise PlaitError(f"--run: {path} not found; train with log.pp_timeline=true and pp > 1")
        d = json.loads(path.read_text())
        events = [tuple(e) for e in d["events"]]
        title = (
            f"{d['schedule']} (measured) p={d['pp']} v={d['virtual_stages']} m={d['microbatches']}"
        )
        plot_timeline(events, png, title)
        return (
            f"{d['schedule']}: measured bubble {d['measured_bubble']:.1%}, simulated with the "
            f"measured costs {d['simulated_bubble']:.1%}; wrote {png}"
        )
    p = load_config(config, overrides).parallel
    try:
        f, i, w, c = (float(x) for x in costs.split(","))
    except ValueError:
        raise PlaitError(
            f"--costs: {costs!r} is not allowed; give four numbers F,I,W,comm"
        ) from None
    pp, v, m = max(p.pp, 2), p.pp_virtual_stages, p.pp_microbatches
    problem = microbatch_problem(p.pp_schedule, pp, v, m)
    if problem:
        raise PlaitError(f"{p.pp_schedule} with pp={pp}, v={v}, m={m}: {problem}")
    sim = simulate(p.pp_schedule, pp, m, v=v, costs=Costs(f, i, w, c))
    sim.plot(png)
    return (
        f"{p.pp_schedule} p={pp} v={v} m={m}: step time {sim.step_time:g} (cost units), "
        f"bubble {sim.bubble:.1%}; wrote {png}"
    )

"""Per-rank pipeline timelines: recording real action times and drawing them.

A timeline is a list of events ``(rank, kind, stage, microbatch, start, end)``; kind is F
(forward), B (full backward), I (backward for inputs) or W (backward for weights). The same
plotter draws simulated (:mod:`plait.pipeline.simulate`) and measured timelines, one row per
rank, like the figures of the zero-bubble paper (Qi et al., arXiv 2401.10241).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

Event = tuple[int, str, int, int, float, float]
COLORS = {"F": "#4C72B0", "B": "#DD8452", "I": "#55A868", "W": "#8172B3"}


def bubble_fraction(events: list[Event]) -> float:
    """Idle share of the ranks' time between the first start and the last end."""
    if not events:
        return 0.0
    ranks = {e[0] for e in events}
    t0, t1 = min(e[4] for e in events), max(e[5] for e in events)
    busy = sum(e[5] - e[4] for e in events)
    return 1.0 - busy / (len(ranks) * (t1 - t0))


def instrument(
    stage, rank: int, events: list[Event], clock: Callable[[], float] = time.perf_counter
):
    """Wrap a PipelineStage's compute calls with a timer (communication waits happen outside
    them, so gaps in the timeline are the bubble plus transfer time)."""

    def wrap(fn, kind_of):
        @functools.wraps(fn)
        def timed(chunk_id, *args, **kwargs):
            t0 = clock()
            out = fn(chunk_id, *args, **kwargs)
            events.append((rank, kind_of(kwargs), stage.stage_index, chunk_id, t0, clock()))
            return out

        return timed

    stage.forward_one_chunk = wrap(stage.forward_one_chunk, lambda kw: "F")
    stage.backward_one_chunk = wrap(
        stage.backward_one_chunk, lambda kw: "B" if kw.get("full_backward", True) else "I"
    )
    stage.backward_weight_one_chunk = wrap(stage.backward_weight_one_chunk, lambda kw: "W")


def plot_timeline(events: list[Event], png: str, title: str = "") -> None:
    """One row per rank, one bar per action, labelled with its microbatch."""
    # deferred: matplotlib (heavy) only when a picture is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib (heavy) only when a picture is asked for
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ranks = sorted({e[0] for e in events})
    t0 = min(e[4] for e in events)
    span = max(e[5] for e in events) - t0
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(ranks) + 1.2))
    for rank, kind, _stage, mb, start, end in events:
        y = len(ranks) - 1 - ranks.index(rank)
        ax.broken_barh(
            [(start - t0, end - start)], (y - 0.4, 0.8), color=COLORS[kind], ec="k", lw=0.3
        )
        if (end - start) > span / 120:
            ax.text(
                (start + end) / 2 - t0, y, str(mb), ha="center", va="center", fontsize=6, color="w"
            )
    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in reversed(ranks)])
    ax.set_xlabel("time")
    kinds = sorted({e[1] for e in events}, key="FBIW".index)
    names = {"F": "forward", "B": "backward", "I": "backward (inputs)", "W": "backward (weights)"}
    ax.legend(
        handles=[Patch(color=COLORS[k], label=names[k]) for k in kinds],
        loc="upper right",
        fontsize=7,
    )
    ax.set_title(f"{title}  bubble {bubble_fraction(events):.1%}".strip())
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

"""plait plan at default settings (no --mfu, no --efficiency) against published training runs
(plait/plan/published.py: each row with its source). Pure arithmetic, no process.

Every tuned row is held within 25% of the published step time and peak memory; held-out rows
the model is known to miss (STEP_MISS, MEM_MISS) inside the band they miss by, with the reason. A change to the
model that moves any row shows up here. README's plan section prints the same table.
"""

from __future__ import annotations

import statistics

import pytest

from plait.plan.published import HELD_OUT, TUNED, check, table

TT_H100 = (
    "held out: Grand Teton H100s capped at 500 W (the preset is a 700 W SXM5) run ~1.6x slower"
)
#: rows outside 25%: name -> (ratio band it is held in, why)
STEP_MISS = {
    "torchtitan llama3.1-8B 8xH100 FSDP": ((0.64, 0.74), TT_H100),
    "torchtitan llama3.1-8B 8xH100 FSDP + compile": ((0.65, 0.75), TT_H100),
    "torchtitan llama3.1-8B 8xH100 FSDP + compile + float8": ((0.62, 0.72), TT_H100),
    "torchtitan llama3.1-8B 128xH100 FSDP": ((0.62, 0.72), TT_H100),
    "torchtitan llama3.1-8B 128xH100 FSDP + compile": ((0.63, 0.73), TT_H100),
    "torchtitan llama3.1-8B 128xH100 FSDP + compile + float8": ((0.6, 0.7), TT_H100),
}
#: (torchtitan's 70B FSDP 32 x TP 8 float8 row was held at 0.68-0.78 until the plan counted
#: loss_parallel's third (tokens, V/t) gradient tensor, measured on CPU: tests/test_plan_peak.py)
MEM_MISS: dict = {}


def _held(name: str, ratio: float, misses: dict, what: str, source: str) -> None:
    band, why = misses.get(name, ((0.75, 1.25), ""))
    assert band[0] <= ratio <= band[1], (name, what, ratio, why or source)


@pytest.mark.parametrize("run", TUNED + HELD_OUT, ids=lambda r: r.name)
def test_published_row(run):
    assert run.source and run.step_s > 0
    c = check(run)
    _held(run.name, c.step_ratio, STEP_MISS, "step", run.source)
    if c.mem_ratio is not None:
        _held(run.name, c.mem_ratio, MEM_MISS, "memory", run.source)
    if run.mem_metric == "max_memory_reserved" and not run.job.compiled:
        # reserved >= allocated: the plan's figure is the lower (compile's effect on what is
        # saved for backward is not modelled: compiled rows may come out above)
        assert c.mem_ratio <= 1.0, (run.name, c.mem_ratio)
    assert run.mem_metric in ("max_memory_allocated", "max_memory_reserved"), run.mem_metric


def test_published_rows_cover_the_acceptance_grid():
    """At least 12 tuned rows from at least 4 sources, on A100 and H100 (and H200), with
    FSDP, tp, pp and 3-D mixes, bf16/fp16 and fp8, memory on more than one GPU; the held-out
    set is a different source."""
    assert len(TUNED) >= 12 and len({r.source for r in TUNED}) >= 4
    tags = {t for r in TUNED for t in r.tags}
    assert {"a100", "h100", "h200", "fsdp", "tp", "pp", "3d", "fp8", "bf16"} <= tags
    assert not {r.source for r in HELD_OUT} & {r.source for r in TUNED}
    assert len({r.gpu for r in TUNED if r.mem_gib is not None}) >= 2


def test_published_medians():
    """Median |error| over the tuned rows: step time within 15% (measured 9.7%, worst 22.8%),
    peak memory within 10% (measured 4.9%, worst 13.5%); over the held-out rows: step time
    within 20% (measured 17.4%), memory within 10% (measured 6.8%)."""
    tuned, held = [check(r) for r in TUNED], [check(r) for r in HELD_OUT]
    med = statistics.median
    step = [abs(c.step_ratio - 1) for c in tuned]
    assert med(step) <= 0.15 and max(step) <= 0.25, step
    assert med(abs(c.step_ratio - 1) for c in held) <= 0.20
    mem = [abs(c.mem_ratio - 1) for c in tuned if c.mem_ratio is not None]
    assert med(mem) <= 0.10 and max(mem) <= 0.25, mem
    assert med(abs(c.mem_ratio - 1) for c in held if c.mem_ratio is not None) <= 0.10
    assert not {r.name for r in TUNED} & (set(STEP_MISS) | set(MEM_MISS))


def test_published_table_renders():
    out = table(TUNED[:2])
    assert out.count("\n") == 3 and "Megatron GPT 1.7B" in out

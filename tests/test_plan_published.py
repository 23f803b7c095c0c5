"""plait plan at default settings (no --mfu, no --efficiency) against published training runs
(plait/plan/published.py: each row with its source). Pure arithmetic, no process.

Every row is held: within 25% of the published step time and peak memory, or, for the rows
the model is known to miss, inside the band it misses by, with the reason. A change to the
model that moves any row shows up here. README's plan section prints the same table.
"""

from __future__ import annotations

import statistics

import pytest

from plait.plan.published import HELD_OUT, TUNED, check, table

#: rows outside 25%: name -> (step ratio band, memory ratio band or None, why)
KNOWN_MISS = {
    "NeMo GPT3-20B 64xH100 fp8": (
        (1.25, 1.45), None,
        "the plan exposes the ZeRO-1 reduce-scatter over 32 ranks on InfiniBand beyond the last "
        "micro-batch's backward; Megatron-core overlaps it better than the stated rule",
    ),
    **{
        name: (
            (0.6, 0.85), (0.25, 0.9),
            "KempnerForge's DTensor TP (no async TP, logits gathered whole) runs slower than the "
            "plan's TP, and its FSDP runs hold memory the plan cannot name (a full fp32 copy of "
            "the parameters at FSDP 8, less at 2 and 4; not in torch's FSDP2 as plait uses it)",
        )
        for name in (
            "KempnerForge 7B TP2 2xH200", "KempnerForge 7B FSDP2+TP2 4xH200",
            "KempnerForge 7B FSDP2+TP4 8xH200", "KempnerForge 13B FSDP2+TP4 8xH200",
            "KempnerForge 7B FSDP4+TP4 16xH200", "KempnerForge 13B FSDP4+TP4 16xH200",
            "KempnerForge 7B FSDP8+TP4 32xH200", "KempnerForge 13B FSDP8+TP4 32xH200",
            "KempnerForge 70B FSDP8+TP4 32xH200",
        )
    },
    "KempnerForge 7B FSDP4 4xH200": ((0.9, 1.1), (0.6, 0.75), "FSDP memory: see above"),
    "KempnerForge 13B FSDP8 8xH200": ((0.75, 0.9), (0.45, 0.55), "FSDP memory: see above"),
    **{
        name: (
            (0.55, 0.7), (1.1, 1.3),
            "held out: Grand Teton H100s at a 500 W cap (the preset is 700 W SXM5) run ~1.6x "
            "slower; the plan's selective-op activations overcount torchtitan's (it recomputes "
            "every other matmul, plait's op mode saves them all)",
        )
        for name in (
            "torchtitan llama3.1-8B 8xH100 FSDP", "torchtitan llama3.1-8B 8xH100 FSDP + compile",
            "torchtitan llama3.1-8B 8xH100 FSDP + compile + float8",
        )
    },
}  # fmt: skip


def _inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]


@pytest.mark.parametrize("run", TUNED + HELD_OUT, ids=lambda r: r.name)
def test_published_row(run):
    assert run.source and run.step_s > 0
    c = check(run)
    miss = KNOWN_MISS.get(run.name)
    if miss is None:
        assert abs(c.step_ratio - 1) <= 0.25, (run.name, c.step_ratio, run.source)
        if c.mem_ratio is not None:
            assert abs(c.mem_ratio - 1) <= 0.25, (run.name, c.mem_ratio, run.source)
        return
    step_band, mem_band, why = miss
    assert _inside(c.step_ratio, step_band), (run.name, c.step_ratio, why)
    if c.mem_ratio is not None:
        band = mem_band or (0.75, 1.25)
        assert _inside(c.mem_ratio, band), (run.name, c.mem_ratio, why)


def test_published_rows_cover_the_acceptance_grid():
    """At least 12 tuned rows from at least 4 sources, on A100 and H100 (and H200), with
    FSDP, tp, pp and 3-D mixes, bf16/fp16 and fp8; the held-out set is a different source."""
    assert len(TUNED) >= 12 and len({r.source for r in TUNED}) >= 4
    tags = {t for r in TUNED for t in r.tags}
    assert {"a100", "h100", "h200", "fsdp", "tp", "pp", "3d", "fp8", "bf16"} <= tags
    assert not {r.source for r in HELD_OUT} & {r.source for r in TUNED}


def test_published_medians():
    """Median |error| of the step time over the tuned rows within 15% (measured 10.4%), over
    the held-out rows within 20% (measured 17.8%). Not met: the worst row within 25% (see
    KNOWN_MISS) and the memory median within 10% (measured 26%, all from KempnerForge)."""
    err = [abs(check(r).step_ratio - 1) for r in TUNED]
    held = [abs(check(r).step_ratio - 1) for r in HELD_OUT]
    assert statistics.median(err) <= 0.15, statistics.median(err)
    assert statistics.median(held) <= 0.20, statistics.median(held)


def test_published_table_renders():
    out = table(TUNED[:2])
    assert out.count("\n") == 3 and "Megatron GPT 1.7B" in out

"""plait plan at default settings (no --mfu, no --efficiency) against published training runs
(plait/plan/published.py: each row with its source). Pure arithmetic, no process.

Every row is held: within 25% of the published step time and peak memory, or, for the rows
the model is known to miss (STEP_MISS, MEM_MISS), inside the band it misses by, with the reason. A change to the
model that moves any row shows up here. README's plan section prints the same table.
"""

from __future__ import annotations

import statistics

import pytest

from plait.plan.published import HELD_OUT, TUNED, check, table

NEMO_DP = (
    "the plan exposes the ZeRO-1 reduce-scatter over 32 ranks on InfiniBand beyond the last "
    "micro-batch's backward; Megatron-core hides more of it than the stated overlap rule"
)
KF_TP = (
    "the plan's TP runs faster than KempnerForge's DTensor TP at 70B (no async TP, logits "
    "gathered whole on every tp rank)"
)
TT_H100 = (
    "held out: Grand Teton H100s capped at 500 W (the preset is a 700 W SXM5) run ~1.6x slower"
)
KF_MEM = (
    "KempnerForge's FSDP2-wrapped runs hold about 4 bytes x parameters / tp more than the plan "
    "counts (its bf16 parameters with an fp32 reduce dtype); torch's FSDP2 as plait uses it and "
    "torchtitan show no such term, so the plan leaves it out"
)

#: rows outside 25%: name -> (ratio band it is held in, why)
STEP_MISS = {
    "NeMo GPT3-20B 64xH100 fp8": ((1.29, 1.4), NEMO_DP),
    "KempnerForge 70B FSDP8+TP4 32xH200": ((0.63, 0.74), KF_TP),
    "torchtitan llama3.1-8B 8xH100 FSDP": ((0.56, 0.67), TT_H100),
    "torchtitan llama3.1-8B 8xH100 FSDP + compile": ((0.56, 0.67), TT_H100),
    "torchtitan llama3.1-8B 8xH100 FSDP + compile + float8": ((0.56, 0.67), TT_H100),
}
MEM_MISS = {
    "KempnerForge 7B FSDP4 4xH200": ((0.59, 0.7), KF_MEM),
    "KempnerForge 13B FSDP8 8xH200": ((0.42, 0.53), KF_MEM),
    "KempnerForge 13B FSDP2+TP4 8xH200": ((0.67, 0.78), KF_MEM),
    "KempnerForge 7B FSDP4+TP4 16xH200": ((0.68, 0.79), KF_MEM),
    "KempnerForge 13B FSDP4+TP4 16xH200": ((0.6, 0.71), KF_MEM),
    "KempnerForge 7B FSDP8+TP4 32xH200": ((0.66, 0.77), KF_MEM),
    "KempnerForge 13B FSDP8+TP4 32xH200": ((0.56, 0.67), KF_MEM),
    "KempnerForge 70B FSDP8+TP4 32xH200": ((0.26, 0.37), KF_MEM),
}


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


def test_published_rows_cover_the_acceptance_grid():
    """At least 12 tuned rows from at least 4 sources, on A100 and H100 (and H200), with
    FSDP, tp, pp and 3-D mixes, bf16/fp16 and fp8; the held-out set is a different source."""
    assert len(TUNED) >= 12 and len({r.source for r in TUNED}) >= 4
    tags = {t for r in TUNED for t in r.tags}
    assert {"a100", "h100", "h200", "fsdp", "tp", "pp", "3d", "fp8", "bf16"} <= tags
    assert not {r.source for r in HELD_OUT} & {r.source for r in TUNED}


def test_published_medians():
    """Median |error| of the step time over the tuned rows within 15% (measured 10.6%), over
    the held-out rows within 20% (measured 17.8%). Not met: the worst row within 25% (see
    STEP_MISS) and the memory median within 10% (measured 27%, all from KempnerForge: MEM_MISS)."""
    err = [abs(check(r).step_ratio - 1) for r in TUNED]
    held = [abs(check(r).step_ratio - 1) for r in HELD_OUT]
    assert statistics.median(err) <= 0.15, statistics.median(err)
    assert statistics.median(held) <= 0.20, statistics.median(held)


def test_published_table_renders():
    out = table(TUNED[:2])
    assert out.count("\n") == 3 and "Megatron GPT 1.7B" in out

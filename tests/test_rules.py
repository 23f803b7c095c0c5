"""plait.rules' tables agree with what they describe: each schedule's traits with torch's own
schedule (its class and the actions it runs), each engine cell with the refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch.distributed.pipelining.schedules import PipelineScheduleSingle

from plait import rules
from plait.pipeline.schedules import action_order, schedule_class


@pytest.mark.parametrize("name", list(rules.SCHEDULES))
def test_schedule_traits_match_torch(name):
    info = rules.SCHEDULES[name]
    assert info.single == issubclass(schedule_class(name), PipelineScheduleSingle)
    v = (info.stages_per_rank or (2,))[0]
    order = action_order(name, 2, v, 4)
    kinds = {a[0] for rank in order for a in rank}
    assert info.zero_bubble == ("W" in kinds)
    # V shape: rank 0 runs the first and the last stage
    assert info.v_shape == ({0, 2 * v - 1} <= {a[1] for a in order[0]} and v == 2)
    # breadth first: every forward before the first backward on rank 0
    first_b = next(i for i, a in enumerate(order[0]) if a[0] != "F")
    assert info.breadth_first == all(a[0] != "F" for a in order[0][first_b:])


def test_engine_table_is_what_the_layout_rules_read():
    for (engine, stage), cell in rules.DP_ENGINES.items():
        tp_2d = rules.layout_problem(
            dp_engine=engine, zero_stage=stage, pp=1, dp=2, tp=2, schedule="1F1B"
        )
        assert (tp_2d is None) == cell.tp_2d
        pp = rules.layout_problem(
            dp_engine=engine, zero_stage=stage, pp=2, dp=1, tp=1, schedule="1F1B"
        )
        assert (pp is None) == cell.pipeline
    assert rules.uses_fsdp("torch", 2, 2) and not rules.uses_fsdp("torch", 2, 1)
    assert rules.uses_ddp("torch", 1, 2) and not rules.uses_ddp("deepspeed", 0, 2)


def test_rules_and_config_load_no_torch():
    code = "import sys, plait.config, plait.rules; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]

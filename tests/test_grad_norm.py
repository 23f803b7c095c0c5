"""Gradient clipping on a tensor of 1e7 elements gives one process's numbers under every layout.

fp32 norms on CPU lose accuracy with size (relative 3.6e-4 at 1e7 elements), so before plait took
norms in float64 one process, ZeRO-3, tp=2 and DeepSpeed each clipped seed_bigmodel (its
``layers.1.fc.weight`` holds 1000 x 10000) by a different factor and drifted by ~4.5e-4 from
step 3. Clipping is active on every step here (norm ~3 against 0.5), and the global norm itself
is compared too. HSDP (4 ranks) runs in tests/test_dp_engines.py's 4-rank launch.
"""

from __future__ import annotations

import pytest
import torch

from helpers import BIG_CLIP, assert_same_norms, assert_same_run, run_distributed_many, run_single
from plait.grad_norm import total_norm

pytestmark = pytest.mark.timeout(600)


def test_float64_norm_is_the_same_whole_or_sharded():
    g = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0))
    exact = g.double().norm().item()
    whole = total_norm([g]).item()
    halves = total_norm(list(g.chunk(2))).item()
    assert abs(whole - exact) / exact < 1e-12 and abs(halves - exact) / exact < 1e-12
    # what the fp32 norm gives instead: the error this module exists for
    assert abs(torch.linalg.vector_norm(g).item() - exact) / exact > 1e-5


LAYOUTS = {
    "ddp": ["parallel.zero_stage=0"],
    "zero1": ["parallel.zero_stage=1"],
    "zero2": ["parallel.zero_stage=2"],
    "zero3": ["parallel.zero_stage=3"],
    "tp2": ["parallel.tp=2"],
    "pp2 1F1B": ["parallel.pp=2", "parallel.pp_schedule=1F1B", "parallel.pp_microbatches=2"],
    "deepspeed zero0": ["parallel.dp_engine=deepspeed", "parallel.zero_stage=0"],
    "deepspeed zero1": ["parallel.dp_engine=deepspeed", "parallel.zero_stage=1"],
    "deepspeed zero2": ["parallel.dp_engine=deepspeed", "parallel.zero_stage=2"],
    "deepspeed zero3": ["parallel.dp_engine=deepspeed", "parallel.zero_stage=3"],
    "fairscale zero1": ["parallel.dp_engine=fairscale", "parallel.zero_stage=1"],
    "fairscale zero2": ["parallel.dp_engine=fairscale", "parallel.zero_stage=2"],
}


def test_clipping_a_1e7_tensor_matches_one_process_on_every_layout(tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("fairscale")
    ref = run_single(BIG_CLIP, tmp_path / "one")
    runs = [BIG_CLIP + ov for ov in LAYOUTS.values()]
    got = run_distributed_many(runs, 2, tmp_path / "two", timeout=540)
    for name, res in zip(LAYOUTS, got):
        try:
            assert_same_run(ref, res)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        assert_same_norms(ref, res, name)

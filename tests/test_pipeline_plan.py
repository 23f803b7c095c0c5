"""Pipeline pieces that need no processes: the schedule simulator against closed forms, the
stage split, and config validation before any process group."""

from __future__ import annotations

import pytest

from plait.config import load_config
from plait.errors import ConfigError
from plait.mesh import ParallelDims
from plait.models import build_model
from plait.parallelize import check_supported
from plait.pipeline.simulate import Costs, simulate
from plait.pipeline.split import balanced_cuts, build_stage, stage_ids, stage_rank

UNIT = Costs(forward=1.0, backward_input=1.0, backward_weight=1.0, comm=0.0)


@pytest.mark.parametrize("name", ["GPipe", "1F1B"])
@pytest.mark.parametrize("p,m", [(2, 2), (2, 5), (4, 4), (4, 8), (4, 16), (8, 12)])
def test_gpipe_and_1f1b_bubble_is_exactly_closed_form(name, p, m):
    sim = simulate(name, p, m, costs=Costs(forward=1.0, backward_input=1.3, backward_weight=0.7))
    assert sim.bubble == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert sim.step_time == pytest.approx((m + p - 1) * 3.0)


@pytest.mark.parametrize("name", ["Interleaved1F1B", "LoopedBFS"])
@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 16, 2), (4, 8, 4)])
def test_interleaved_bubble_is_reduced_by_v(name, p, m, v):
    # Megatron's interleaved schedule (Narayanan et al., arXiv 2104.04473, sec. 2.2):
    # bubble time (p-1)(F+B)/v, i.e. fraction (p-1)/(v*m + p-1)
    sim = simulate(name, p, m, v=v, costs=UNIT)
    assert sim.bubble == pytest.approx((p - 1) / (v * m + p - 1), abs=1e-12)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_zb_h1_bubble_is_a_third_of_1f1b(p, m):
    # ZB-H1 (arXiv 2401.10241): idle time (p-1)(F+B-W) vs 1F1B's (p-1)(F+B+W): 1/3 at F=B=W
    idle = {n: (s := simulate(n, p, m, costs=UNIT)).bubble * s.step_time for n in ("ZB-H1", "1F1B")}
    assert idle["ZB-H1"] == pytest.approx(idle["1F1B"] / 3, rel=1e-9)


@pytest.mark.parametrize("name", ["ZBVZeroBubble", "InterleavedZeroBubble", "DualPipeV"])
@pytest.mark.parametrize("p,m", [(2, 8), (4, 16), (4, 32)])
def test_zero_bubble_schedules_are_near_zero(name, p, m):
    sim = simulate(name, p, m, v=2, costs=UNIT)
    one_f_one_b = simulate("1F1B", p, m, costs=UNIT).bubble
    assert sim.bubble < 0.05 and sim.bubble < one_f_one_b / 4


def test_comm_time_adds_bubble_and_plot_writes_png(tmp_path):
    slow = simulate("1F1B", 4, 8, costs=Costs(comm=0.5))
    assert slow.bubble > simulate("1F1B", 4, 8).bubble
    png = tmp_path / "t.png"
    simulate("ZBVZeroBubble", 4, 8, v=2).plot(str(png))
    assert png.stat().st_size > 5000


def test_balanced_cuts_and_layouts():
    assert balanced_cuts([1.0] * 8, 0.0, 0.0, 4) == [2, 4, 6]
    assert balanced_cuts([1.0] * 8, 3.0, 3.0, 2) == [4]
    assert balanced_cuts([1.0] * 6, 4.0, 0.0, 2) == [1]  # heavy embedding: fewer blocks first
    assert stage_ids("Interleaved1F1B", 1, 4, 2) == [1, 5]
    assert stage_ids("ZBVZeroBubble", 1, 4, 2) == [1, 6]
    assert [stage_rank("DualPipeV", s, 4) for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]


def test_stage_keeps_single_process_names():
    cfg = load_config(None, ["model.name=gpt"])
    model = build_model(cfg)
    first, last = build_stage(model, 0, 4, [2, 4, 6]), build_stage(model, 3, 4, [2, 4, 6])
    assert list(first.layers) == ["0", "1"] and first.norm is None and first.output is None
    assert list(last.layers) == ["6", "7"] and last.tok_embeddings is None
    names = {n for part in (first, last) for n, _ in part.named_parameters()}
    assert "layers.7.attention.wq.weight" in names and "output.weight" in names


def _check(overrides: list[str], world: int) -> None:
    cfg = load_config(None, overrides)
    check_supported(cfg, ParallelDims.from_config(cfg, world))


@pytest.mark.parametrize(
    "overrides,world,needle",
    [
        (["model.name=seed_mlp", "data.name=digits", "parallel.pp=4"], 4, "only 3 blocks"),
        (["parallel.pp=4", "parallel.pp_schedule=DualPipeV", "parallel.pp_virtual_stages=2"], 4,
         "allowed: 8, 9"),
        (["parallel.pp=2", "parallel.pp_schedule=1F1B", "parallel.pp_microbatches=1"], 2, "allowed: 2"),
        (["parallel.pp=2", "parallel.pp_schedule=ZBVZeroBubble"], 2, "needs 2 stage(s) per rank"),
        (["parallel.pp=2", "parallel.pp_microbatches=5"], 2, "use one of [2, 4, 8, 16, 32]"),
        (["parallel.pp=2", "parallel.pp_cuts=[9]"], 2, "1..7"),
        (["parallel.pp=2", "train.dtype=fp16"], 2, "bf16"),
        (["parallel.pp=2", "parallel.pp_schedule=DualPipeV", "parallel.pp_virtual_stages=2",
          "train.compile=true"], 2, "compile=false"),
        (["parallel.pp=2", "parallel.pp_schedule=InterleavedZeroBubble",
          "parallel.pp_virtual_stages=2", "parallel.zero_stage=3"], 4, "use zero_stage=2"),
        (["parallel.pp=2", "parallel.zero_stage=1"], 4, "zero_stage 0 (replicated stages), 2 or 3"),
        (["parallel.pp=2", "parallel.dp_engine=deepspeed"], 4, "take data parallel from the torch"),
        (["parallel.pp=2", "parallel.tp=2"], 8, "use dp_engine=torch with zero_stage=2 or 3"),
    ],
)  # fmt: skip
def test_bad_pipeline_configs_are_refused_before_any_process_group(overrides, world, needle):
    with pytest.raises(ConfigError, match="parallel|train") as e:
        _check(overrides, world)
    assert needle in str(e.value), str(e.value)


def test_good_pipeline_configs_pass():
    _check(
        ["parallel.pp=2", "parallel.pp_schedule=ZBVZeroBubble", "parallel.pp_virtual_stages=2"], 4
    )
    _check(["parallel.pp=2", "parallel.tp=2", "parallel.zero_stage=3"], 8)  # 3-D
    _check(["parallel.pp=2", "parallel.dp_replicate=2", "parallel.zero_stage=2"], 8)


def test_cli_pp_timeline_writes_simulated_picture(tmp_path, capsys):
    from plait.cli import main

    png = tmp_path / "sim.png"
    ov = ["parallel.pp=4", "parallel.pp_schedule=1F1B", "parallel.pp_microbatches=8"]
    assert main(["pp-timeline", "configs/gpt_tiny.yaml", *ov, "--png", str(png)]) == 0
    assert "bubble 27.3%" in capsys.readouterr().out and png.exists()  # 3/11, the closed form


def test_block_costs_by_params_and_flops():
    from plait.pipeline.split import block_costs

    model = build_model(load_config(None, ["model.name=gpt", "data.seq_len=16"]))
    blocks, pre, post = block_costs(model, "params", 16)
    assert pre == 256 * 64 and post == 64 + 64 * 256 and len(blocks) == 8
    fblocks, fpre, fpost = block_costs(model, "flops", 16)
    assert fpre == 0.0 and fpost == 2.0 * 64 * 256  # embedding is a lookup, head a matmul
    assert fblocks[0] == 2.0 * (4 * 64 * 64 + 3 * 64 * 192) + 4.0 * 16 * 64

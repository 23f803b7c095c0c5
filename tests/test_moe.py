"""Mixture of experts (plait.models.moe) and expert parallel (plait.expert_parallel) against one
process: ep=4, ep=2 x tp=2, ep=2 x pp=2, dp_shard=4 with ep=2 (FSDP2, experts reduced over their
copies) and per-sequence capacity, and a checkpoint resharded ep=2 -> ep=4 -> ep=2 mid-run, all
in ONE launch of 4 gloo ranks; a 5-D run on 8 ranks (pp x dp_shard x cp, ep over dp_shard x
cp); published parameter counts; the refusals of sizes that do not split, before any process
group."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import assert_same_run, losses, run_distributed_many, run_single
from plait.config import load_config
from plait.errors import ConfigError
from plait.models import build_model
from plait.trainer import validate

# moe_tiny: dim 64, 8 experts of width 64, top-2; one shared expert, the balance loss and the
# aux-loss-free bias on, so routing changes every step and all three are compared
MOE = [
    "model.preset=moe_tiny",
    "model.n_layers=2",
    "model.moe_shared=1",
    "model.moe_aux_loss=0.01",
    "model.moe_bias_update=0.01",
    "data.seq_len=16",
    "train.global_batch=8",
    "train.steps=3",
    "optim.schedule=constant",
    "train.eval_batches=1",
]
# SGD where tensor parallel changes reduction order inside the experts: Adam's first steps
# divide a near-zero gradient by its own size, so 1e-9 differences become 1e-5 in a weight
# (tests/test_tensor_parallel.py says the same of seed_bigmodel)
SGD = ["optim.name=sgd", "optim.lr=0.05"]
CAP = ["model.moe_capacity_factor=1.0"]


def test_published_parameter_counts():
    """Mixtral 8x7B: 46.7B total, 12.9B active (its config.json; arXiv 2401.04088).
    DeepSeek-V3: 671B, 37B active (arXiv 2412.19437); gpt models its multi-head latent
    attention as 128-head attention (18.4M more per block), so the totals sit 0.17% / 4.5% above."""

    def counts(preset):
        m = build_model(load_config(None, [f"model.preset={preset}", "data.seq_len=16"]))
        return sum(p.numel() for p in m.parameters()), m.active_params()

    total, active = counts("mixtral_8x7b")
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9, (total, active)
    total, active = counts("deepseek_v3")
    assert abs(total / 671e9 - 1) < 0.002, total
    assert abs(active / 37e9 - 1) < 0.05, active


def _refusal(overrides: list[str], world: int) -> str:
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, overrides), world)
    return str(e.value)


def test_refusals_name_sizes_that_work():
    tiny = ["model.preset=moe_tiny", "data.seq_len=16"]
    msg = _refusal(tiny + ["model.moe_experts=6", "parallel.ep=4"], 4)
    assert "model.moe_experts: 6 does not split over parallel.ep=4" in msg and ": 1, 2" in msg
    msg = _refusal(tiny + ["parallel.ep=4", "parallel.dp_shard=2", "parallel.pp=2"], 4)
    assert "parallel.ep: 4 does not divide dp_shard x cp = 2 x 1 = 2" in msg and ": 1, 2" in msg
    assert "needs a mixture-of-experts model" in _refusal(["parallel.ep=2"], 2)
    assert "zero_stage 0, 2 or 3" in _refusal(tiny + ["parallel.ep=2", "parallel.zero_stage=1"], 2)
    msg = _refusal(tiny + ["model.moe_ffn_dim=30", "parallel.tp=4", "parallel.zero_stage=3"], 4)
    assert "model.moe_ffn_dim: 30" in msg
    sp = ["parallel.tp=2", "parallel.sequence_parallel=true"]
    assert "sequence_parallel" in _refusal(tiny + sp, 2)
    assert "moe_top_k: 9" in _refusal(tiny + ["model.moe_top_k=9"], 1)
    validate(
        load_config(None, tiny + ["parallel.ep=2", "parallel.tp=2", "parallel.zero_stage=3"]), 8
    )


@pytest.mark.timeout(420)
def test_four_ranks_ep_tp_pp_fsdp_and_reshard(tmp_path):
    ck = tmp_path / "ck"
    chain = MOE + [f"checkpoint.dir={ck}", "checkpoint.keep=5"]
    variants = {
        "ep=4": MOE + ["parallel.ep=4"],
        "ep=2 x tp=2": MOE + SGD + ["parallel.ep=2", "parallel.tp=2", "parallel.zero_stage=3"],
        "ep=2 x pp=2": MOE + ["parallel.ep=2", "parallel.pp=2", "parallel.pp_microbatches=2"],
        "dp_shard=4 ep=2 fsdp": MOE + CAP + ["parallel.ep=2", "parallel.zero_stage=3"],
        # one run in three legs: ep=2 for step 1, resumed at ep=4 for step 2, back at ep=2
        "ckpt ep=2": chain + ["parallel.ep=2", "train.steps=1"],
        "ckpt ep=4": chain + ["parallel.ep=4", "train.steps=2"],
        "ckpt ep=2 again": chain + ["parallel.ep=2", "train.steps=3"],
    }
    runs = dict(
        zip(variants, run_distributed_many(list(variants.values()), 4, tmp_path / "r", timeout=400))
    )
    ref = run_single(MOE, tmp_path / "one")
    for name in ("ep=4", "ep=2 x pp=2"):
        _same(ref, runs[name], name)
    _same(run_single(MOE + SGD, tmp_path / "one_sgd"), runs["ep=2 x tp=2"], "ep=2 x tp=2")
    cap = run_single(MOE + CAP, tmp_path / "one_cap")
    _same(cap, runs["dp_shard=4 ep=2 fsdp"], "dp_shard=4 ep=2 fsdp")
    assert losses(cap) != losses(ref)  # capacity 1.0 does drop tokens here

    # the three legs continue one another: together they are the straight single-process run
    legs = [runs["ckpt ep=2"], runs["ckpt ep=4"], runs["ckpt ep=2 again"]]
    assert [[m["step"] for m in r.metrics] for r in legs] == [[1], [2], [3]]
    legs[-1].metrics = [*legs[0].metrics, *legs[1].metrics, *legs[2].metrics]
    _same(ref, legs[-1], "ep=2 -> ep=4 -> ep=2")


def _same(ref, got, name):
    try:
        assert_same_run(ref, got)
    except AssertionError as e:
        raise AssertionError(f"{name}: {e}") from None


@pytest.mark.timeout(400)
def test_eight_ranks_5d(tmp_path):
    """pp=2 x dp_shard=2 x cp=2 with ep=4 folded over dp_shard x cp (FSDP2 per stage); cp
    refuses the sequence-wise balance loss, so the bias balances here."""
    five_d = [o for o in MOE if "aux_loss" not in o] + ["train.steps=2", "train.global_batch=4"]
    layout = ["parallel.pp=2", "parallel.dp_shard=2", "parallel.cp=2", "parallel.ep=4"]
    layout += ["parallel.pp_microbatches=2", "parallel.zero_stage=2"]
    (got,) = run_distributed_many([five_d + layout], 8, tmp_path / "r", timeout=380)
    _same(run_single(five_d, tmp_path / "one"), got, "pp=2 x dp_shard=2 x cp=2, ep=4")


def test_planner_prices_experts_and_all_to_all(capsys):
    """Mixtral at ep=8 on 64 ranks: 1 expert per rank (3 x 4096 x 14336 x 32 layers / tp), the
    all-to-all bytes 4 N k D per layer (bench/ep_comm.py measures them), the stated assumption,
    and MFU FLOPs from the active parameters."""
    from plait.cli import main
    from plait.plan.experts import plan_experts
    from plait.plan.shapes import ModelShape

    e = plan_experts(
        n_experts=8, top_k=2, expert_dim=14336, dim=4096, n_moe_layers=32, ep=8, tp=2, pp=1,
        local_tokens=4096, act_bytes=2,
    )  # fmt: skip
    assert e.experts_per_rank == 1 and e.expert_params_per_rank == 32 * 3 * 4096 * 14336 // 2
    assert e.a2a_bytes_per_layer == 4 * 4096 * 2 * 4096 * 2 and e.off_rank_fraction == 7 / 8
    cfg = load_config(None, ["model.preset=mixtral_8x7b", "data.seq_len=4096"])
    shape = ModelShape.from_config(cfg)
    active = build_model(cfg).active_params()
    dense = active - shape.embed_params
    assert shape.flops_per_token(4096) == 6 * dense + 32 * shape.attn_flops_per_token(4096)
    rc = main(
        ["plan", "gpt_tiny", "--gpus", "64", "--gpu", "h100", "--top", "0",
         "model.preset=mixtral_8x7b", "parallel.ep=8", "parallel.zero_stage=3",
         "data.seq_len=4096", "train.global_batch=64", "train.dtype=bf16"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "experts  1 per ep rank" in out and "router imbalance 1.00" in out


def test_plan_keeps_each_ranks_experts_whole_and_prices_the_all_to_all(capsys):
    """Under ep (or tp) the experts are plain tensors no data-parallel engine shards
    (plait.expert_parallel): the plan holds this rank's 1/ep of them whole, ZeRO-3 shards only
    the dense rest; the all-to-alls and the experts' gradient all-reduce are in the step time;
    and a layout launch refuses (ep with ZeRO-1) is refused by the plan with launch's words."""
    from plait.cli import main
    from plait.plan import Job, Layout, ModelShape, make_cluster, plan_memory, step_time

    cfg = load_config(
        None,
        ["model.preset=mixtral_8x7b", "data.seq_len=4096", "train.global_batch=64",
         "train.dtype=bf16", "parallel.ep=8", "parallel.zero_stage=3"],
    )  # fmt: skip
    shape, job = ModelShape.from_config(cfg), Job.from_config(cfg)
    lay = Layout.from_config(cfg, 64)
    experts = 32 * 8 * 3 * 4096 * 14336
    assert shape.expert_block_params * 32 == experts and shape.n_experts == 8
    mem = plan_memory(shape, lay, job, 80 * 2**30)
    dense = shape.params - experts
    assert mem.params == pytest.approx(4 * (dense / 64 + experts / 8))  # fp32 weights (autocast)
    assert mem.optimizer == pytest.approx(8 * (dense / 64 + experts / 8))
    one = plan_memory(shape, dataclasses.replace(lay, ep=1), job, 80 * 2**30)
    assert one.params == pytest.approx(4 * shape.params / 64)  # ep=1: ordinary ZeRO-3 params
    cl = make_cluster("h100", 64)
    t, t1 = (
        step_time(shape, lay, job, cl),
        step_time(shape, dataclasses.replace(lay, ep=1), job, cl),
    )
    assert t.ep_s > 0 and t1.ep_s == 0 and t.total_s > t1.total_s
    assert t.dp_s < t1.dp_s  # the experts' gradients leave the ZeRO reduce-scatter
    rc = main(
        ["plan", "gpt_tiny", "--gpus", "64", "--top", "0", "model.preset=mixtral_8x7b",
         "parallel.ep=8", "parallel.zero_stage=1", "train.global_batch=64"]
    )  # fmt: skip
    assert rc == 2 and "zero_stage 0, 2 or 3" in capsys.readouterr().err

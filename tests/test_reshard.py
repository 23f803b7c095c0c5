"""Checkpoints outlive layouts (DESIGN.md promise 2): a checkpoint saved under FSDP (ZeRO-3),
tensor parallel, pipeline parallel or 2-D FSDP x TP loads under one process and under the other
layouts, optimizer state included, and training continues on the straight run's trajectory
(fp32, relative 1e-5 per step)."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers import losses, run_distributed_many, run_single
from plait.checkpoint import list_checkpoints

GPT = ["model.n_layers=2", "data.seq_len=32", "train.global_batch=8", "train.steps=6",
       "optim.warmup_steps=2", "checkpoint.every=3", "checkpoint.keep=5"]  # fmt: skip
LAYOUTS = {
    "fsdp": ["parallel.zero_stage=3"],
    "tp": ["parallel.tp=2"],
    "pp": ["parallel.pp=2", "parallel.pp_microbatches=2"],
    "fsdp_tp": ["parallel.tp=2", "parallel.zero_stage=3"],
}


def _half_way(src_run, dst):
    """A checkpoint folder holding only the step-3 checkpoint of ``src_run``."""
    src = src_run / "checkpoints" / "step-00000003"
    assert src in list_checkpoints(src_run / "checkpoints")
    shutil.copytree(src, dst / "step-00000003")
    return dst


def _check(straight, resumed, what):
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6], what
    for x, y in zip(losses(straight)[3:], losses(resumed)):
        assert abs(x - y) / x < 1e-5, (what, losses(straight), losses(resumed))
    for k, v in straight.state.items():
        torch.testing.assert_close(
            resumed.state[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{what} {k}: {m}"
        )


@pytest.mark.timeout(600)
def test_reshard_matrix(tmp_path):
    straight = run_single(GPT, tmp_path / "straight")
    two = ["fsdp", "tp", "pp"]
    saved = dict(
        zip(
            two,
            run_distributed_many(
                [GPT + LAYOUTS[k] for k in two], 2, tmp_path / "save2", timeout=280
            ),
        )
    )
    # every 2-rank layout -> one process
    for name, res in saved.items():
        ck = _half_way(res.run_dir, tmp_path / f"{name}_to_one")
        _check(
            straight,
            run_single(GPT + [f"checkpoint.dir={ck}"], tmp_path / f"{name}_to_one_run"),
            f"{name} -> 1",
        )
    # each 2-rank layout -> another (fsdp -> tp -> pp -> fsdp)
    cross = [("fsdp", "tp"), ("tp", "pp"), ("pp", "fsdp")]
    cfgs = [
        GPT
        + LAYOUTS[dst]
        + [f"checkpoint.dir={_half_way(saved[src].run_dir, tmp_path / f'{src}_to_{dst}')}"]
        for src, dst in cross
    ]
    for (src, dst), res in zip(
        cross, run_distributed_many(cfgs, 2, tmp_path / "cross2", timeout=280)
    ):
        _check(straight, res, f"{src} -> {dst}")
    # 4 ranks: save under 2-D FSDP x TP and load the TP checkpoint under 2-D
    ck_tp = _half_way(saved["tp"].run_dir, tmp_path / "tp_to_2d")
    got = run_distributed_many(
        [GPT + LAYOUTS["fsdp_tp"], GPT + LAYOUTS["fsdp_tp"] + [f"checkpoint.dir={ck_tp}"]],
        4,
        tmp_path / "four",
        timeout=280,
    )
    _check(straight, got[1], "tp -> fsdp x tp")
    ck_2d = _half_way(got[0].run_dir, tmp_path / "2d_to_one")
    _check(
        straight,
        run_single(GPT + [f"checkpoint.dir={ck_2d}"], tmp_path / "2d_to_one_run"),
        "fsdp x tp -> 1",
    )


@pytest.mark.timeout(600)
def test_partitioned_optimizer_checkpoints_reshard(tmp_path):
    """ZeRO-1 (ZeroRedundancyOptimizer) and fairscale OSS keep each parameter's optimizer state
    on one rank: their checkpoints still load under one process and FSDP, and a one-process
    checkpoint loads under them, optimizer state included."""
    adam = ["optim.name=adam"]  # state that matters: a lost moment would move the losses
    straight = run_single(GPT + adam, tmp_path / "straight")
    zero1, oss = (
        ["parallel.zero_stage=1"],
        ["parallel.dp_engine=fairscale", "parallel.zero_stage=2"],
    )
    saved = run_distributed_many(
        [GPT + adam + zero1, GPT + adam + oss], 2, tmp_path / "save2", timeout=280
    )
    src = {"1": straight, "zero1": saved[0], "oss": saved[1]}
    pairs = {("zero1", "fsdp"): LAYOUTS["fsdp"], ("oss", "zero1"): zero1, ("1", "zero1"): zero1,
             ("1", "oss"): oss}  # fmt: skip
    cfgs = {
        f"{a} -> {b}": GPT + adam + extra
        + [f"checkpoint.dir={_half_way(src[a].run_dir, tmp_path / f'{a}_to_{b}')}"]
        for (a, b), extra in pairs.items()
    }  # fmt: skip
    bad = []
    for name, res in zip(cfgs, run_distributed_many(list(cfgs.values()), 2, tmp_path / "load2")):
        try:
            _check(straight, res, name)
        except AssertionError as e:
            bad.append(str(e)[:300])
    assert not bad, "\n".join(bad)
    ck = _half_way(saved[0].run_dir, tmp_path / "zero1_to_1")
    _check(
        straight, run_single(GPT + adam + [f"checkpoint.dir={ck}"], tmp_path / "z1_1"), "zero1 -> 1"
    )

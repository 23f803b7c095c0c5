"""Checkpoints outlive layouts (docs/design.md promise 2): a checkpoint saved under FSDP (ZeRO-3),
tensor parallel, pipeline parallel or 2-D FSDP x TP loads under one process and under each of
the other layouts (ZeRO-1 / fairscale OSS below; 3-D in test_3d), optimizer state included, and
training continues on the straight run's trajectory (fp32, relative 1e-5 per step)."""

from __future__ import annotations

import pytest

from helpers import assert_resumed, run_distributed_many, run_single, step3_checkpoint

GPT = ["model.n_layers=2", "data.seq_len=32", "train.global_batch=8", "train.steps=6",
       "optim.warmup_steps=2", "checkpoint.every=3", "checkpoint.keep=5"]  # fmt: skip
LAYOUTS = {
    "fsdp": ["parallel.zero_stage=3"],
    "tp": ["parallel.tp=2"],
    "pp": ["parallel.pp=2", "parallel.pp_microbatches=2"],
    "fsdp_tp": ["parallel.tp=2", "parallel.zero_stage=3"],
}


@pytest.mark.timeout(600)
def test_reshard_matrix(tmp_path):
    """Every ordered pair of {fsdp, tp, pp, fsdp x tp}, and each of them -> one process."""
    straight = run_single(GPT, tmp_path / "straight")
    two = ["fsdp", "tp", "pp"]
    saved = dict(
        zip(two, run_distributed_many([GPT + LAYOUTS[k] for k in two], 2, tmp_path / "save2"))
    )

    def resume(src: str, dst: str) -> list[str]:
        return (
            GPT
            + LAYOUTS[dst]
            + [
                f"checkpoint.dir={step3_checkpoint(saved[src].run_dir, tmp_path / f'{src}_to_{dst}')}"
            ]
        )

    # 4 ranks: save under 2-D FSDP x TP, and load each 2-rank layout's checkpoint under 2-D
    got = run_distributed_many(
        [GPT + LAYOUTS["fsdp_tp"]] + [resume(k, "fsdp_tp") for k in two], 4, tmp_path / "four"
    )
    saved["fsdp_tp"] = got[0]
    results = {f"{k} -> fsdp_tp": res for k, res in zip(two, got[1:])}
    # 2 ranks: every 2-rank layout from every other one, and from 2-D
    pairs = [(a, b) for a in [*two, "fsdp_tp"] for b in two if a != b]
    got = run_distributed_many([resume(a, b) for a, b in pairs], 2, tmp_path / "cross2")
    results.update({f"{a} -> {b}": res for (a, b), res in zip(pairs, got)})
    # one process from each
    for k in saved:
        ck = step3_checkpoint(saved[k].run_dir, tmp_path / f"{k}_to_one")
        results[f"{k} -> 1"] = run_single(GPT + [f"checkpoint.dir={ck}"], tmp_path / f"{k}_1")
    assert len(results) == 3 + 9 + 4
    for what, res in results.items():
        assert_resumed(straight, res, what)


@pytest.mark.timeout(600)
def test_partitioned_optimizer_checkpoints_reshard(tmp_path):
    """ZeRO-1 (ZeroRedundancyOptimizer) and fairscale OSS keep each parameter's optimizer state
    on one rank, flat ZeRO-1/2 (parallel.zero_flat) pieces of flat buckets: their checkpoints
    still load under one process and FSDP, and a one-process checkpoint loads under them,
    optimizer state included."""
    adam = ["optim.name=adam"]  # state that matters: a lost moment would move the losses
    straight = run_single(GPT + adam, tmp_path / "straight")
    zero1, oss = (
        ["parallel.zero_stage=1", "parallel.zero_flat=false"],
        ["parallel.dp_engine=fairscale", "parallel.zero_stage=2"],
    )
    flat2 = ["parallel.zero_stage=2", "parallel.zero_bucket_mb=0.05"]  # several buckets
    flat1 = ["parallel.zero_stage=1"]
    saved = run_distributed_many(
        [GPT + adam + zero1, GPT + adam + oss, GPT + adam + flat2], 2, tmp_path / "save2",
        timeout=280,
    )  # fmt: skip
    src = {"1": straight, "zero1": saved[0], "oss": saved[1], "flat2": saved[2]}
    pairs = {("zero1", "fsdp"): LAYOUTS["fsdp"], ("oss", "zero1"): zero1, ("1", "zero1"): zero1,
             ("1", "oss"): oss, ("flat2", "fsdp"): LAYOUTS["fsdp"], ("1", "flat2"): flat2,
             ("zero1", "flat1"): flat1}  # fmt: skip
    cfgs = {
        f"{a} -> {b}": GPT + adam + extra
        + [f"checkpoint.dir={step3_checkpoint(src[a].run_dir, tmp_path / f'{a}_to_{b}')}"]
        for (a, b), extra in pairs.items()
    }  # fmt: skip
    bad = []
    for name, res in zip(cfgs, run_distributed_many(list(cfgs.values()), 2, tmp_path / "load2")):
        try:
            assert_resumed(straight, res, name)
        except AssertionError as e:
            bad.append(str(e)[:300])
    assert not bad, "\n".join(bad)
    ck = step3_checkpoint(saved[0].run_dir, tmp_path / "zero1_to_1")
    assert_resumed(
        straight, run_single(GPT + adam + [f"checkpoint.dir={ck}"], tmp_path / "z1_1"), "zero1 -> 1"
    )

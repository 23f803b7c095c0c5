"""Pipeline parallel against one process: every torch.distributed.pipelining schedule, at
pp=2 and pp=4 (interleaved / looped / V ones with 2 stages per rank), and pp=2 x dp=2, give the
same per-step losses (relative 1e-5, helpers.RTOL: only float summation order changes) and
the same final full weights and held-out loss. BatchNorm normalises per micro-batch, so a
pipeline with m micro-batches is compared with one process accumulating over the same m
micro-batches (running statistics and num_batches_tracked included); dropout masks depend on
the layout, so its evaluation is compared with one process's evaluation of the same weights.
All configs of one world size run inside ONE
launched group (helpers.run_distributed_many) to pay process start-up once."""

from __future__ import annotations

import json
import math

import pytest

from helpers import assert_same_run_and_eval, eval_of, run_distributed_many, run_single

pytestmark = pytest.mark.timeout(300)

SCHEDULES = {  # name -> stages per rank
    "GPipe": 1,
    "1F1B": 1,
    "Interleaved1F1B": 2,
    "LoopedBFS": 2,
    "InterleavedZeroBubble": 2,
    "ZBVZeroBubble": 2,
    "DualPipeV": 2,
}
GPT = [  # gpt tiny: 8 blocks, so pp=4 x 2 virtual stages is one block per stage
    "data.name=synthetic",  # seeded token sequences: no corpus to read per rank and config
    "data.seq_len=16",
    "train.global_batch=8",
    "train.steps=5",
    "train.eval_batches=1",
    "optim.warmup_steps=2",
    "train.grad_clip=1.0",
]
BIG = ["model.name=seed_bigmodel", "data.name=synthetic", "train.steps=5", "optim.name=adam"]
MLP = ["model.name=seed_mlp", "data.name=digits", "data.eval_fraction=0.1", "optim.name=sgd",
       "optim.lr=0.01", "optim.momentum=0.9", "train.global_batch=64", "train.steps=5"]  # fmt: skip
MLP_BN = MLP + ["model.batchnorm=true"]


def pp(name: str, n: int, m: int, v: int | None = None) -> list[str]:
    v = SCHEDULES[name] if v is None else v
    return [f"parallel.pp={n}", f"parallel.pp_schedule={name}", f"parallel.pp_virtual_stages={v}",
            f"parallel.pp_microbatches={m}"]  # fmt: skip


def check_all(ref, results, names) -> None:
    assert len(results) == len(names)
    for name, got in zip(names, results):
        assert_same_run_and_eval(ref, got, name)


@pytest.mark.timeout(500)
def test_every_schedule_pp2_every_model_matches_one_process(tmp_path):
    gpt_cfgs = {f"gpt {n}": GPT + pp(n, 2, 4) for n in SCHEDULES}
    gpt_cfgs["gpt ZBVZeroBubble"] += ["log.pp_timeline=true"]  # measured timeline, same numbers
    # grad accumulation (two schedule runs per step) with explicit cut points
    gpt_cfgs["gpt 1F1B accum cuts"] = GPT + pp("1F1B", 2, 2) + [
        "train.grad_accum=2", "parallel.pp_cuts=[3]"]  # fmt: skip
    # seed_bigmodel has 3 blocks: one stage per rank (the multi-stage schedules at v=1 too)
    big_cfgs = {f"big {n}": BIG + pp(n, 2, 4, v=1) for n in list(SCHEDULES)[:5]}
    # seed_mlp (3 blocks) with BatchNorm in every schedule family that fits one stage per rank
    bn_cfgs = {f"mlp bn {n}": MLP_BN + pp(n, 2, 4, v=1) for n in list(SCHEDULES)[:5]}
    other = {  # evaluation of the other model options: plain, dropout (mlp and gpt)
        "mlp": (MLP, MLP + pp("1F1B", 2, 4)),
        "mlp dropout": (MLP + ["model.dropout=0.2"], MLP + ["model.dropout=0.2"] + pp("1F1B", 2, 4)),
        "gpt dropout": (GPT + ["model.dropout=0.2"], GPT + ["model.dropout=0.2"] + pp("GPipe", 2, 4)),
        # bf16 autocast: seed_mlp's stage boundary is bf16 (the stages are given its real dtype)
        "mlp bn bf16": (MLP_BN + ["train.dtype=bf16"], MLP_BN + ["train.dtype=bf16"] + pp("1F1B", 2, 4)),
    }  # fmt: skip
    cfgs = {**gpt_cfgs, **big_cfgs, **bn_cfgs, **{k: v[1] for k, v in other.items()}}
    results = run_distributed_many(list(cfgs.values()), 2, tmp_path / "pp2", timeout=450)
    got = dict(zip(cfgs, results))
    check_bn(run_single(MLP_BN + ["train.grad_accum=4"], tmp_path / "bn"), got, bn_cfgs, tmp_path)
    check_all(run_single(MLP, tmp_path / "mlp"), [got["mlp"]], ["mlp"])
    for name, (one, _) in other.items():  # the pipeline's evaluation = one process's, same weights
        want = eval_of(got[name].state, one, tmp_path / f"eval {name}")
        assert got[name].final_eval == pytest.approx(want, rel=1e-5), (name, want)
    check_all(run_single(GPT, tmp_path / "one"), results[: len(gpt_cfgs)], list(gpt_cfgs))
    zbv = json.loads((results[5].run_dir / "pp_timeline.json").read_text())
    assert {e[0] for e in zbv["events"]} == {0, 1} and len(zbv["events"]) == 2 * 2 * 4 * 3
    assert 0 <= zbv["simulated_bubble"] < zbv["measured_bubble"] < 1
    assert (results[5].run_dir / "pp_timeline.png").exists()
    check_all(run_single(BIG, tmp_path / "big"), [got[n] for n in big_cfgs], list(big_cfgs))


def check_bn(ref, got: dict, names, tmp_path) -> None:
    """BatchNorm under pp=2 with 4 micro-batches = one process accumulating 4 micro-batches:
    losses, weights, running statistics and num_batches_tracked (5 steps x 4), and a finite
    evaluation equal to one process's evaluation of those weights and statistics."""
    check_all(ref, [got[n] for n in names], list(names))
    for name in names:
        state = got[name].state
        assert all(int(state[f"layers.{i}.bn.num_batches_tracked"]) == 20 for i in (0, 1)), name
        assert all(math.isfinite(v) for v in got[name].final_eval.values()), name
        want = eval_of(state, MLP_BN, tmp_path / f"eval {name}")
        assert got[name].final_eval == pytest.approx(want, rel=1e-5), (name, want)


def test_every_schedule_pp4_and_pp2_x_dp2_match_one_process(tmp_path):
    cfgs = {f"pp4 {n}": GPT + pp(n, 4, 8) for n in SCHEDULES}
    cfgs["pp2 x dp2 1F1B"] = GPT + pp("1F1B", 2, 2)
    cfgs["pp2 x dp2 ZBVZeroBubble"] = (
        GPT + pp("ZBVZeroBubble", 2, 4) + ["parallel.pp_balance=flops"]
    )
    results = run_distributed_many(list(cfgs.values()), 4, tmp_path / "pp4", timeout=280)
    check_all(run_single(GPT, tmp_path / "one"), results, list(cfgs))


def test_a_failing_stage_ends_every_rank(tmp_path):
    # rank 1 raises at step 2 while rank 0 waits inside the schedule for its activations: the
    # launcher must end both ranks non-zero; a hang would fail as "hung" after the timeout
    # (start-up plus the 60 s the issue allows).
    with pytest.raises(AssertionError, match="run failed") as e:
        run_distributed_many([GPT + pp("1F1B", 2, 4)], 2, tmp_path, timeout=90, fail_rank=1)
    assert "injected failure on rank 1" in str(e.value)

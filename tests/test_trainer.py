"""Single-process training: each zoo model learns, runs are bit-reproducible, accumulation and
the run folder behave, and a NaN stops the run with its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import losses, run_single
from plait.errors import PlaitError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_seed_mlp_reaches_90_percent_on_held_out_digits(tmp_path):
    res = run_single([], tmp_path, config=f"{CONFIGS}/seed_mlp.yaml")
    assert res.final_eval["eval_accuracy"] >= 0.90, res.final_eval


def test_gpt_tiny_loss_falls_on_stdlib_text(tmp_path):
    res = run_single(
        ["train.steps=40", "train.eval_every=0"], tmp_path, config=f"{CONFIGS}/gpt_tiny.yaml"
    )
    first, last = losses(res)[0], sum(losses(res)[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert res.final_eval["eval_loss"] < first


def test_seed_bigmodel_runs_its_steps(tmp_path):
    res = run_single(["train.steps=3"], tmp_path, config=f"{CONFIGS}/seed_bigmodel.yaml")
    assert [m["step"] for m in res.metrics] == [1, 2, 3]
    assert all(m["loss"] > 0 and m["samples"] == 32 for m in res.metrics)
    assert res.metrics[-1]["samples_per_s"] > 0  # over the log interval: on logged steps


GPT = [
    "model.n_layers=2",
    "data.seq_len=32",
    "train.global_batch=8",
    "train.steps=4",
    "optim.warmup_steps=1",
]


def test_two_runs_are_bit_identical(tmp_path):
    a = run_single(GPT + ["model.dropout=0.1"], tmp_path / "a")
    b = run_single(GPT + ["model.dropout=0.1"], tmp_path / "b")
    assert losses(a) == losses(b)
    assert [m["grad_norm"] for m in a.metrics] == [m["grad_norm"] for m in b.metrics]


def test_grad_accumulation_gives_the_same_gradient(tmp_path):
    a = run_single(GPT, tmp_path / "a")
    b = run_single(GPT + ["train.grad_accum=4"], tmp_path / "b")
    for x, y in zip(losses(a), losses(b)):
        assert abs(x - y) / x < 1e-5


def test_run_folder_contents(tmp_path):
    res = run_single(GPT + ["log.tensorboard=true", "log.wandb=offline", "log.every=2"], tmp_path)
    d = res.run_dir
    assert (d / "config.yaml").is_file() and list((d / "tensorboard").glob("events.*"))
    assert list((d / "wandb").glob("offline-run-*"))
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_s",
        "peak_mem_bytes",
        "eval_loss",
    ):
        assert key in recs[-1], key


def test_lr_schedule_warmup_then_cosine(tmp_path):
    res = run_single(GPT + ["train.steps=6", "optim.warmup_steps=2", "optim.lr=1e-3"], tmp_path)
    lrs = [m["lr"] for m in res.metrics]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5]


def test_nan_loss_stops_with_the_step_or_is_skipped(tmp_path):
    bad = GPT + [
        "optim.name=sgd",
        "optim.lr=1e12",
        "train.grad_clip=0",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
    ]
    with pytest.raises(PlaitError, match=r"at step \d+; lower optim.lr"):
        run_single(bad + ["train.steps=20"], tmp_path / "stop")
    skip = bad + ["train.steps=20", "train.on_nan=skip"]
    res = run_single(skip + ["train.max_nan_skips=20"], tmp_path / "skip")
    assert any(m.get("skipped") for m in res.metrics) and len(res.metrics) == 20
    # skipping without end (every step non-finite once the weights blew up) stops at the bound
    with pytest.raises(PlaitError, match=r"for 4 steps in a row .*train.max_nan_skips=3;") as e:
        run_single(skip + ["train.max_nan_skips=3"], tmp_path / "bound")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(tmp_path, dtype):
    ref = run_single(GPT, tmp_path / "fp32")
    got = run_single(GPT + [f"train.dtype={dtype}"], tmp_path / dtype)
    for x, y in zip(losses(ref), losses(got)):
        assert abs(x - y) / x < 0.02, (losses(ref), losses(got))  # half-precision matmuls: ~1e-2

"""Plain DDP (``plait train --nproc 2``) against one process on the same config: same per-step
losses (relative 1e-5) and the same final weights."""

from __future__ import annotations

import json

import pytest

from helpers import assert_same_run, run_distributed, run_single

pytestmark = pytest.mark.timeout(240)

GPT = [
    "model.n_layers=2",
    "data.seq_len=32",
    "train.global_batch=8",
    "train.steps=6",
    "optim.warmup_steps=2",
    "train.grad_clip=1.0",
]


def test_ddp_gpt_with_accumulation_matches_one_process(tmp_path):
    ref = run_single(GPT, tmp_path / "one")
    got = run_distributed(GPT + ["train.grad_accum=2"], 2, tmp_path / "ddp")
    assert_same_run(ref, got)
    info = json.loads((got.run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["layout"]["dp_shard"] == 2


def test_ddp_seed_mlp_matches_one_process(tmp_path):
    ov = [
        "model.name=seed_mlp",
        "model.preset=default",
        "data.name=digits",
        "optim.name=sgd",
        "optim.lr=0.05",
        "train.steps=8",
    ]
    assert_same_run(run_single(ov, tmp_path / "one"), run_distributed(ov, 2, tmp_path / "ddp"))

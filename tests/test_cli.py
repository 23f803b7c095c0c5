"""The ``plait`` command as a user runs it: real subprocesses, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["log.wandb=off", "log.tensorboard=false"]


def plait(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plait.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(240)
def test_train_nproc_2_then_compare_with_one_process(tmp_path):
    ov = [
        "train.steps=5",
        "optim.warmup_steps=2",
        "train.eval_every=0",
        "model.n_layers=2",
        "data.seq_len=32",
        *QUIET,
    ]
    two = plait(
        "train", "configs/gpt_tiny.yaml", *ov, "--nproc", "2", "--run-dir", str(tmp_path / "two")
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    one = subprocess.run(
        [sys.executable, "-m", "plait.train", "configs/gpt_tiny.yaml", *ov, f"log.run_dir={tmp_path / 'one'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert "step     5 | loss" in one.stdout
    cmp = plait(
        "compare", str(tmp_path / "one"), str(tmp_path / "two"), "--png", str(tmp_path / "c.png")
    )
    assert cmp.returncode == 0, cmp.stderr
    max_rel = float(
        next(ln for ln in cmp.stdout.splitlines() if ln.startswith("max relative")).split(":")[-1]
    )
    assert max_rel < 1e-5, cmp.stdout
    assert (tmp_path / "c.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["train", "configs/gpt_tiny.yaml", "train.stpes=1"], "did you mean 'steps'"),
        (["train", "configs/gpt_tiny.yaml", "parallel.tp=3", "--nproc", "2"], "world size"),
        (["compare", "nowhere", "nowhere"], "has no metrics.jsonl"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, needle):
    r = plait(*args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_info_lists_versions_and_engines():
    r = plait("info", timeout=60)
    assert (
        r.returncode == 0
        and "torch:" in r.stdout
        and "gloo: True" in r.stdout
        and "deepspeed:" in r.stdout
    )


def test_overrides_may_follow_options():
    from plait.cli import _parser, main

    assert _parser().parse_known_args(["train", "c.yaml", "--nproc", "2", "train.steps=3"])[1] == [
        "train.steps=3"
    ]
    with pytest.raises(SystemExit):
        main(["train", "c.yaml", "--nproc", "2", "--bogus"])

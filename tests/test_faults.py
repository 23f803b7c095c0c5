"""A rank that dies ends the whole job within a bounded time, with a message naming the rank;
it never hangs the survivors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_killed_rank_ends_the_job_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "plait.cli", "train", "configs/gpt_tiny.yaml", "--nproc", "2", "--run-dir", str(run_dir),
        "train.steps=100000", "optim.warmup_steps=0", "model.n_layers=2", "data.seq_len=32", "train.eval_every=0",
        "log.wandb=off", "log.tensorboard=false", "log.every=1", "parallel.timeout_s=600",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.2)
        ranks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "spawn" in " ".join(p.cmdline())
        ]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        victim = ranks[1]
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(
            timeout=60
        )  # far below parallel.timeout_s: the launcher, not a timeout, ends it
        elapsed = time.time() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("plait: error: rank ") and "failed" in last, last
    assert elapsed < 30, elapsed
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] >= 2

"""``kill`` (SIGTERM) on a launcher stops the whole job, cleanly: every rank finishes its step,
a checkpoint of that step is saved, the launcher exits with the requeue status (75) and no
process of the job is left, whatever launcher sat in between (torchrun and accelerate start
ranks in sessions of their own, DeepSpeed's runner dies at once while its ranks save). A rerun
resumes on the trajectory of a run that was never stopped (docs/design.md, "Signals and
preemption"). Ray: tests/test_launch_run.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from launch_helpers import (
    CONFIG,
    ROOT,
    SHORT,
    assert_stopped_cleanly,
    free_port,
    kill_session,
    metrics,
    start_logged,
    wait_for_step,
)  # fmt: skip

from helpers import run_single
from plait.preemption import MARKER


@pytest.mark.timeout(240)
def test_sigterm_to_each_launcher_stops_every_process_after_a_checkpoint(tmp_path):
    """torchrun, deepspeed and accelerate side by side (one wait for all three)."""
    long = [*SHORT, "train.steps=100000"]
    runs = {}
    for backend in ("torchrun", "deepspeed", "accelerate"):
        run = tmp_path / backend
        port = [] if backend == "torchrun" else ["--port", str(free_port())]
        argv = [sys.executable, "-m", "plait.cli", "launch", backend, CONFIG, *long,
                "--run-dir", str(run), "--nproc", "2", *port]  # fmt: skip
        runs[backend] = (start_logged(argv, run), run)
    try:
        deadline = time.monotonic() + 150
        signalled = {}
        for backend, (proc, run) in runs.items():
            wait_for_step(proc, run, deadline)
            proc.send_signal(signal.SIGTERM)
            signalled[backend] = time.monotonic()
        for backend, (proc, run) in runs.items():
            assert_stopped_cleanly(proc, run, signalled[backend])
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                kill_session(proc, grace=0)


@pytest.mark.timeout(240)
def test_sigterm_to_plait_train_nproc_saves_and_a_rerun_resumes(tmp_path):
    job = [*SHORT, "train.steps=30"]
    ref = run_single(job, tmp_path / "ref", config=str(ROOT / CONFIG))
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "plait.cli", "train", CONFIG, *job, "--nproc", "2",
            "--run-dir", str(run)]  # fmt: skip
    proc = start_logged(argv, run)
    try:
        wait_for_step(proc, run, time.monotonic() + 120, steps=2)
        proc.send_signal(signal.SIGTERM)
        info = assert_stopped_cleanly(proc, run, time.monotonic())
    finally:
        if proc.poll() is None:
            kill_session(proc, grace=0)
    assert 2 <= info["step"] < 30, info  # stopped mid-run, not at the end
    r = subprocess.run(
        ["timeout", "-k", "5", "150", *argv], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ},
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"step-{info['step']:08d} (step {info['step']})" in out, out[-3000:]  # resumed there
    assert not (run / MARKER).exists()
    got = metrics(run)
    assert [m["step"] for m in got] == list(range(1, 31))
    for a, b in zip(ref.metrics, got):
        assert abs(a["loss"] - b["loss"]) / a["loss"] <= 1e-5, (a, b)

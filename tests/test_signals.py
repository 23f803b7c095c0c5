"""``kill`` (SIGTERM) on a launcher stops the whole job, cleanly: every rank finishes its step,
a checkpoint of that step is saved, the launcher exits with the requeue status (75) and no
process of the job is left, whatever launcher sat in between (torchrun and accelerate start
ranks in sessions of their own, DeepSpeed's runner dies at once while its ranks save). A rerun
resumes on the trajectory of a run that was never stopped (docs/design.md, "Signals and
preemption"). Ray's ranks are actors in processes of the cluster, which no signal reaches:
the driver asks them through the run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray_local
from launch_helpers import (
    CONFIG,
    ROOT,
    assert_session_gone,
    free_port,
    kill_session,
    metrics,
    session_pids,
)  # fmt: skip

from helpers import run_single
from plait.preemption import EXIT_REQUEUE, MARKER

SHORT = [
    "optim.warmup_steps=1", "model.n_layers=2", "data.seq_len=32", "train.eval_every=0",
    "log.every=1", "log.wandb=off", "log.tensorboard=false", "log.progress=off",
]  # fmt: skip


def _live_with(needle: str) -> list[int]:
    """Pids (not zombies) whose command line names ``needle`` (a unique run folder)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and needle.encode() in (d / "cmdline").read_bytes():
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d.name))
        except OSError:
            pass
    return out


def _ray_job_actors(run: Path) -> list[int]:
    """The Ray Train actors (ranks, controller) alive in the session of the cluster whose
    temp dir is inside ``run`` (ray_local); the cluster's own daemons live on until it stops."""
    names = (b"ray::RayTrainWorker", b"ray::TrainController")
    out = []
    for sid in {_session(p) for p in _live_with(str(run))}:
        for pid in session_pids(sid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(names):
                    out.append(pid)
            except OSError:
                pass
    return out


def _session(pid: int) -> int:
    try:  # after the command name: state, ppid, pgrp, session
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except OSError:
        return -1


def _start(argv: list[str], run: Path, env: dict | None = None) -> subprocess.Popen:
    log = open(run.parent / f"{run.name}.log", "w")
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env,
    )  # fmt: skip


def _wait_for_step(proc: subprocess.Popen, run: Path, deadline: float, steps: int = 1) -> None:
    m = run / "metrics.jsonl"
    while not (m.is_file() and len(m.read_text().splitlines()) >= steps):
        assert proc.poll() is None, (run.parent / f"{run.name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{run.name}: no step logged"
        time.sleep(0.01)


def _assert_stopped_cleanly(
    proc: subprocess.Popen, run: Path, signalled: float, ray: bool = False
) -> dict:
    """Exit 75 within a bounded time, the marker, the checkpoint of the marker's step, the
    metrics up to it, and no process of the job left (by session and by run folder; under Ray
    no rank or controller actor left on the cluster, which holds the run folder's name)."""
    try:
        rc = proc.wait(timeout=100)
    except subprocess.TimeoutExpired:
        kill_session(proc, grace=0)
        raise AssertionError(f"{run.name}: launcher still running 100 s after SIGTERM") from None
    took = time.monotonic() - signalled
    log = (run.parent / f"{run.name}.log").read_text()
    assert rc == EXIT_REQUEUE, f"{run.name}: exit {rc}\n{log[-3000:]}"
    assert "stopped by SIGTERM after step" in log.strip().splitlines()[-1], log[-2000:]
    assert took < 60, f"{run.name}: {took:.1f} s from SIGTERM to exit"
    assert_session_gone(proc.pid, wait=5)
    deadline = time.monotonic() + 10  # Ray ends a finished job's actors asynchronously
    while ray and _ray_job_actors(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _ray_job_actors(run) if ray else _live_with(str(run))
    assert not left, f"{run.name}: job processes outlived the launcher: {left}"
    info = json.loads((run / MARKER).read_text())
    step = info["step"]
    assert info["signal"] == "SIGTERM" and Path(info["checkpoint"]).name == f"step-{step:08d}"
    assert (Path(info["checkpoint"]) / "manifest.json").is_file()
    assert metrics(run)[-1]["step"] == step
    return info


@pytest.mark.timeout(300)
def test_sigterm_to_each_launcher_stops_every_process_after_a_checkpoint(tmp_path):
    """torchrun, deepspeed, accelerate and ray side by side (one wait for all four; Ray's
    cluster starts while the others do)."""
    long = [*SHORT, "train.steps=100000"]
    runs = {}

    def launch(backend: str, run: Path, *opts: str, env: dict | None = None) -> None:
        argv = [sys.executable, "-m", "plait.cli", "launch", backend, CONFIG, *long,
                "--run-dir", str(run), "--nproc", "2", *opts]  # fmt: skip
        runs[backend] = (_start(argv, run, env), run)

    try:
        for backend in ("torchrun", "deepspeed", "accelerate"):
            launch(backend, tmp_path / backend, *([] if backend == "torchrun" else
                                                  ["--port", str(free_port())]))  # fmt: skip
        with ray_local.ray_cluster() as (address, ray_run, env):
            launch("ray", ray_run, "--address", address, env=env)
            deadline = time.monotonic() + 180
            signalled = {}
            for backend, (proc, run) in runs.items():
                _wait_for_step(proc, run, deadline)
                proc.send_signal(signal.SIGTERM)
                signalled[backend] = time.monotonic()
            for backend, (proc, run) in runs.items():
                _assert_stopped_cleanly(proc, run, signalled[backend], ray=backend == "ray")
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
    proc = _start(argv, run)
    try:
        _wait_for_step(proc, run, time.monotonic() + 120, steps=2)
        proc.send_signal(signal.SIGTERM)
        info = _assert_stopped_cleanly(proc, run, time.monotonic())
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

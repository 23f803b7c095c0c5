"""Shared by the launcher tests: run ``plait launch`` as a user would, in its own session with a
hard timeout, and prove afterwards that nothing it started is still alive (by session id)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from plait.preemption import EXIT_REQUEUE, MARKER

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/gpt_tiny.yaml"
# a short gpt tiny run; every step logged so the whole trajectory is compared
TINY = [
    "train.steps=3", "optim.warmup_steps=1", "model.n_layers=2", "data.seq_len=32",
    "train.eval_every=0", "log.every=1", "log.wandb=off", "log.tensorboard=false", "log.progress=off",
]  # fmt: skip
# the same job without an end, for a signal to stop
SHORT = [
    "optim.warmup_steps=1", "model.n_layers=2", "data.seq_len=32", "train.eval_every=0",
    "log.every=1", "log.wandb=off", "log.tensorboard=false", "log.progress=off",
]  # fmt: skip
# fp32 on gloo: only the order of float reductions differs between 1 and N ranks (docs/design.md)
RTOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes whose session is ``sid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(d.name))
    return out


def assert_session_gone(sid: int, wait: float = 10.0) -> None:
    deadline = time.monotonic() + wait
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"stray processes of session {sid}: {left}"


def kill_session(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left (only processes we started)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    proc.wait()


def plait_launch(
    *args: str, timeout: float = 120, env: dict | None = None, pre: list[str] | None = None
) -> subprocess.CompletedProcess:
    """``[pre...] python -m plait.cli launch ARGS``; a hang fails after ``timeout`` seconds."""
    argv = [*(pre or []), sys.executable, "-m", "plait.cli", "launch", *args]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc, grace=0)
        raise AssertionError(f"plait launch {' '.join(args)} hung for {timeout}s") from None
    assert_session_gone(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(ref_dir: Path, got_dir: Path, world_size: int, launched_by: str) -> None:
    """Same trajectory, same metric keys, and run.json says how many ranks really ran and
    which launcher started them."""
    a, b = metrics(ref_dir), metrics(got_dir)
    assert [m["step"] for m in a] == [m["step"] for m in b]

    # straggler_rank appears only on steps where one rank was slow (machine load decides)
    def keys(m: dict) -> list[str]:
        return sorted(k for k in m if k != "straggler_rank")

    assert [keys(m) for m in a] == [keys(m) for m in b]
    worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
    assert worst <= RTOL, f"max relative loss difference {worst:.2e}"
    info = json.loads((Path(got_dir) / "run.json").read_text())
    assert info["world_size"] == world_size and info["launched_by"] == launched_by, info
    for name in ("config.yaml", "metrics.jsonl", "run.json"):
        assert (Path(got_dir) / name).is_file(), name


_REF: dict[str, Path] = {}


def reference_dir(tmp_path_factory) -> Path:
    """One single-process run of the same job, in-process, shared by every launcher test."""
    if "dir" not in _REF:
        from helpers import run_single

        d = tmp_path_factory.mktemp("reference")
        run_single(TINY, d, config=str(ROOT / CONFIG))
        _REF["dir"] = d
    return _REF["dir"]


def live_with(needle: str) -> list[int]:
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


def ray_job_actors(cluster_dir: Path) -> list[int]:
    """The Ray Train actors (ranks, controller) alive in the session of the cluster whose temp
    dir is inside ``cluster_dir`` (ray_local); the cluster's own daemons live on until it stops."""
    names = (b"ray::RayTrainWorker", b"ray::TrainController")
    out = []
    for sid in {_session(p) for p in live_with(str(cluster_dir))}:
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


def start_logged(argv: list[str], run: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session, its output in RUN.log beside the run folder."""
    log = open(run.parent / f"{run.name}.log", "w")
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env,
    )  # fmt: skip


def wait_for_step(proc: subprocess.Popen, run: Path, deadline: float, steps: int = 1) -> None:
    m = run / "metrics.jsonl"
    while not (m.is_file() and len(m.read_text().splitlines()) >= steps):
        assert proc.poll() is None, (run.parent / f"{run.name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{run.name}: no step logged"
        time.sleep(0.01)


def assert_stopped_cleanly(
    proc: subprocess.Popen, run: Path, signalled: float, ray_cluster: Path | None = None,
    signal: str = "SIGTERM",
) -> dict:  # fmt: skip
    """Exit 75 within a bounded time, the marker, the checkpoint of the marker's step, the
    metrics up to it, and no process of the job left (by session and by run folder; on a Ray
    cluster, ``ray_cluster`` its folder, no Ray Train actor left). ``signal``: the one the
    ranks got (SLURM's batch shell passes SIGUSR1 on)."""
    try:
        rc = proc.wait(timeout=100)
    except subprocess.TimeoutExpired:
        kill_session(proc, grace=0)
        raise AssertionError(f"{run.name}: launcher still running 100 s after SIGTERM") from None
    took = time.monotonic() - signalled
    log = (run.parent / f"{run.name}.log").read_text()
    assert rc == EXIT_REQUEUE, f"{run.name}: exit {rc}\n{log[-3000:]}"
    assert f"stopped by {signal} after step" in log.strip().splitlines()[-1], log[-2000:]
    assert took < 60, f"{run.name}: {took:.1f} s from SIGTERM to exit"
    assert_session_gone(proc.pid, wait=5)
    assert not live_with(str(run)), f"{run.name}: job processes outlived the launcher"
    deadline = time.monotonic() + 10  # Ray ends a finished job's actors asynchronously
    while ray_cluster and ray_job_actors(ray_cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ray_job_actors(ray_cluster) if ray_cluster else []
    assert not left, f"{run.name}: Ray Train actors outlived the job: {left}"
    info = json.loads((run / MARKER).read_text())
    step = info["step"]
    assert info["signal"] == signal and Path(info["checkpoint"]).name == f"step-{step:08d}"
    assert (Path(info["checkpoint"]) / "manifest.json").is_file()
    assert metrics(run)[-1]["step"] == step
    return info

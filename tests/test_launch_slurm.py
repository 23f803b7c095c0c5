"""``plait launch slurm`` against a real SLURM started here (Debian packages, installed by the
test when missing): the generated sbatch script is submitted, srun starts one torchrun per node
with the first node as rendezvous, and the run matches one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import (
    CONFIG,
    ROOT,
    SHORT,
    TINY,
    assert_same_losses,
    assert_stopped_cleanly,
    kill_session,
    live_with,
    plait_launch,
    reference_dir,
    start_logged,
    wait_for_step,
)  # fmt: skip
from netns import ADDRS, two_nodes
from slurm_local import local_slurm

from helpers import run_single


def _submit(run: Path, env: dict, pre: list[str], *opts: str) -> str:
    r = plait_launch("slurm", CONFIG, *TINY, "--run-dir", str(run), "--wait", *opts,
                     "--time", "5", env=env, pre=pre, timeout=150)  # fmt: skip
    log = "".join(p.read_text() for p in run.glob("slurm-*.out"))
    assert r.returncode == 0, r.stdout[-3000:] + log[-3000:]
    assert (run / "launch.sbatch").is_file() and log, r.stdout
    assert not live_with(str(run)), "job processes outlived the job"
    return log


def _sigterm_while_waiting(run: Path, env: dict, pre: list[str]) -> None:
    """SIGTERM to ``plait launch slurm --wait`` reaches the job (``scancel --batch
    --signal=TERM``), not only sbatch: the ranks save, the job ends with 75 without requeueing
    itself, plait waits for it and exits 75, and nothing of the job is left."""
    argv = [*pre, sys.executable, "-m", "plait.cli", "launch", "slurm", CONFIG, *SHORT,
            "train.steps=100000", "--run-dir", str(run), "--nproc", "2", "--time", "5", "--wait"]  # fmt: skip
    proc = start_logged(argv, run, {**os.environ, **env})
    try:
        wait_for_step(proc, run, time.monotonic() + 120)
        proc.send_signal(signal.SIGTERM)
        info = assert_stopped_cleanly(proc, run, time.monotonic(), signal="SIGUSR1")
    finally:
        if proc.poll() is None:
            kill_session(proc, grace=0)
    jobid = next(
        ln for ln in (run.parent / f"{run.name}.log").read_text().splitlines() if ln.isdigit()
    )
    show = subprocess.run([*pre, "scontrol", "show", "job", jobid], env=env, capture_output=True,
                          text=True).stdout  # fmt: skip
    assert "JobState=FAILED" in show and "ExitCode=75:0" in show and "Restarts=0" in show, show
    assert info["step"] >= 1


@pytest.mark.timeout(420)
def test_slurm_single_node_sbatch_requeued_by_usr1_ends_on_the_same_losses(tmp_path):
    """The job is told to stop the way ``--signal=B:USR1@T`` does before its time limit; it saves
    after the step in flight, requeues itself, and its second run resumes to the losses of a run
    that was never stopped. No --port: the rendezvous port is the job's own."""
    job = [*TINY, "train.steps=40"]
    run_single(job, tmp_path / "ref", config=str(ROOT / CONFIG))
    run = tmp_path / "run"
    with local_slurm(tmp_path / "slurm") as (env, pre):
        r = plait_launch("slurm", CONFIG, *job, "--run-dir", str(run), "--nproc", "2",
                         "--time", "5", env=env, pre=pre, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:]
        jobid = next(ln for ln in r.stdout.splitlines() if ln.strip().isdigit()).strip()
        ctl = [*pre, "scontrol"]
        deadline = time.monotonic() + 300
        m = run / "metrics.jsonl"
        while not (m.is_file() and len(m.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, "the job logged no step"
            time.sleep(0.01)
        subprocess.run([*pre, "scancel", "--batch", "--signal=USR1", jobid], env=env, check=True)
        while state := subprocess.run([*pre, "squeue", "-h", "-j", jobid, "-o", "%T %r"],
                                      env=env, capture_output=True, text=True).stdout.strip():  # fmt: skip
            assert time.monotonic() < deadline, f"job {jobid} still {state}"
            if "BeginTime" in state:  # SLURM holds a requeued job about two minutes: not here
                # but not within the second of the requeue either: slurmd refuses a credential
                # made in the second it revoked the job's ("Job credential revoked")
                time.sleep(2)
                subprocess.run([*ctl, "update", f"JobId={jobid}", "StartTime=now"], env=env)
            time.sleep(0.2)
        show = subprocess.run([*ctl, "show", "job", jobid], env=env, capture_output=True,
                              text=True).stdout  # fmt: skip
        assert not live_with(str(run)), "job processes outlived the job"
        _sigterm_while_waiting(tmp_path / "waited", env, pre)
    log = "".join(p.read_text() for p in sorted(run.glob("slurm-*.out")))
    assert "JobState=COMPLETED" in show and "Restarts=1" in show, show + log[-3000:]
    assert f":{15000 + int(jobid) % 10000} (restart 1)" in log, log[-3000:]  # the job's own port
    assert '"signal": "SIGUSR1"' in log and (run / f"slurm-{jobid}-node0.out").is_file(), log
    assert not (run / "preempted.json").exists()
    assert_same_losses(tmp_path / "ref", run, world_size=2, launched_by="srun+torchrun")


@pytest.mark.timeout(240)
def test_slurm_two_nodes_over_veth(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    with two_nodes(tmp_path) as nodes, local_slurm(tmp_path / "slurm", nodes, ADDRS) as (env, pre):
        log = _submit(run, env, pre, "--nnodes", "2", "--nproc", "2", "--port", "29513")
    assert "plait: 2 node(s) nodeA,nodeB, rendezvous on nodeA:29513" in log, log[-2000:]
    assert_same_losses(
        reference_dir(tmp_path_factory), run, world_size=4, launched_by="srun+torchrun"
    )

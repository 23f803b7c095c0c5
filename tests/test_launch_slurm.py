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
    TINY,
    assert_same_losses,
    assert_session_gone,
    kill_session,
    plait_launch,
    reference_dir,
)  # fmt: skip
from netns import ADDRS, two_nodes
from slurm_local import local_slurm

from helpers import run_single


def _live_with(needle: str) -> list[int]:
    """Pids whose command line names ``needle`` (our unique run dir): the job's leftovers."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and needle.encode() in (d / "cmdline").read_bytes():
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d.name))
        except OSError:
            pass
    return out


def _submit(run: Path, env: dict, pre: list[str], *opts: str) -> str:
    r = plait_launch("slurm", CONFIG, *TINY, "--run-dir", str(run), "--wait", *opts,
                     "--time", "5", env=env, pre=pre, timeout=150)  # fmt: skip
    log = "".join(p.read_text() for p in run.glob("slurm-*.out"))
    assert r.returncode == 0, r.stdout[-3000:] + log[-3000:]
    assert (run / "launch.sbatch").is_file() and log, r.stdout
    assert not _live_with(str(run)), "job processes outlived the job"
    return log


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
                subprocess.run([*ctl, "update", f"JobId={jobid}", "StartTime=now"], env=env)
            time.sleep(0.2)
        show = subprocess.run([*ctl, "show", "job", jobid], env=env, capture_output=True,
                              text=True).stdout  # fmt: skip
        assert not _live_with(str(run)), "job processes outlived the job"
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


# sbatch --parsable --wait and scancel standing in for SLURM (a real job is the test above; this
# one checks what plait does with a signal while it waits): the job id at once, then the job's
# status once scancel has ended it, with the marker its rank 0 would leave
FAKE_SBATCH = """#!/bin/bash
echo 4242
while [ ! -f "$FAKE/scancel.log" ]; do sleep 0.05; done
echo '{"step": 7, "signal": "SIGUSR1", "checkpoint": null}' > "$RUN/preempted.json"
echo "job 4242 ended"
exit 75
"""
FAKE_SCANCEL = """#!/bin/bash
echo "$*" >> "$FAKE/scancel.log"
"""


@pytest.mark.timeout(60)
def test_sigterm_while_waiting_on_sbatch_stops_the_job_and_waits_for_it(tmp_path):
    fake, run = tmp_path / "bin", tmp_path / "run"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE": str(fake),
           "RUN": str(run)}  # fmt: skip
    out = tmp_path / "out.log"
    argv = [sys.executable, "-m", "plait.cli", "launch", "slurm", CONFIG, *TINY,
            "--run-dir", str(run), "--wait"]  # fmt: skip
    with open(out, "w") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 45
        while "4242" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            kill_session(proc, grace=0)
    log = out.read_text()
    # the job, not sbatch, got the signal: the batch shell's TERM trap saves without requeueing
    assert (fake / "scancel.log").read_text() == "--batch --signal=TERM 4242\n"
    assert "job 4242 ended" in log  # sbatch was waited for, not killed
    assert rc == 75 and "stopped by SIGUSR1 after step 7" in log, log[-2000:]
    assert_session_gone(proc.pid)

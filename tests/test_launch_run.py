"""Each single-node launcher for real: ``plait launch BACKEND`` starts 2 gloo ranks training gpt
tiny, and the run directory holds the same trajectory as one process (relative 1e-5), with
run.json proving 2 ranks ran. Every test checks, by session id, that nothing it started lives on."""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray_local
from launch_helpers import (
    CONFIG,
    SHORT,
    TINY,
    assert_same_losses,
    assert_stopped_cleanly,
    free_port,
    kill_session,
    plait_launch,
    ray_job_actors,
    reference_dir,
    start_logged,
    wait_for_step,
)  # fmt: skip


def _launch(backend, run_dir, *opts, timeout=150, env=None):
    r = plait_launch(backend, CONFIG, *TINY, "--run-dir", str(run_dir), "--nproc", "2", *opts,
                     timeout=timeout, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"run folder: {run_dir}" in r.stdout
    return r


# Rank 1 dies at interpreter start on the first attempt only (a sitecustomize on PYTHONPATH:
# no hook in plait's code); torchrun must restart the whole group and the run still match.
CRASH_ONCE = """import os
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    os._exit(3)
"""


@pytest.mark.timeout(200)
def test_torchrun_single_node_elastic_restart(tmp_path, tmp_path_factory):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(CRASH_ONCE)
    env = {"PYTHONPATH": str(tmp_path / "inject")}
    r = _launch(
        "torchrun", tmp_path / "run", "--max-restarts", "1", "--rdzv-timeout", "60", env=env
    )
    assert "--standalone" in r.stdout and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in r.stdout
    assert "failed (exitcode: 3) local_rank: 1" in r.stdout, r.stdout[-3000:]  # it did restart
    assert_same_losses(
        reference_dir(tmp_path_factory), tmp_path / "run", world_size=2, launched_by="torchrun"
    )


@pytest.mark.timeout(200)
def test_deepspeed_launcher_with_generated_hostfile(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    _launch("deepspeed", run, "--port", str(free_port()))
    assert (run / "hostfile").read_text() == "localhost slots=2\n"
    assert_same_losses(reference_dir(tmp_path_factory), run, world_size=2, launched_by="deepspeed")


@pytest.mark.timeout(200)
def test_accelerate_really_starts_n_processes(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    _launch("accelerate", run, "--port", str(free_port()))
    assert "num_processes: 2" in (run / "accelerate-node0.yaml").read_text()
    # world_size 2 in run.json: the --cpu path of accelerate would have run ONE process
    assert_same_losses(reference_dir(tmp_path_factory), run, world_size=2, launched_by="accelerate")


@pytest.fixture
def ray_cluster():
    with ray_local.ray_cluster(num_cpus=4) as c:  # two jobs of 2 workers at once
        yield c


@pytest.mark.timeout(240)
def test_ray_train_on_a_cluster_started_here_and_sigterm_to_another_job(
    ray_cluster, tmp_path_factory, tmp_path
):
    """Beside the job compared with one process, a job without an end on the same cluster is
    stopped by SIGTERM to ``plait launch ray`` at its first step: its ranks (Ray actors no
    signal reaches) save after the same step, it exits 75, and once both jobs are over no Ray
    Train actor is left on the cluster."""
    address, run, env = ray_cluster
    stopped = tmp_path / "stopped"
    argv = [sys.executable, "-m", "plait.cli", "launch", "ray", CONFIG, *SHORT,
            "train.steps=100000", "--run-dir", str(stopped), "--nproc", "2", "--address", address]  # fmt: skip
    proc = start_logged(argv, stopped, env)
    try:
        with ThreadPoolExecutor(1) as pool:
            compared = pool.submit(_launch, "ray", run, "--address", address, timeout=200, env=env)
            wait_for_step(proc, stopped, time.monotonic() + 150)
            proc.send_signal(signal.SIGTERM)
            assert_stopped_cleanly(proc, stopped, time.monotonic())
            compared.result()
    finally:
        if proc.poll() is None:
            kill_session(proc, grace=0)
    deadline = time.monotonic() + 10  # Ray ends a finished job's actors asynchronously
    while ray_job_actors(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_job_actors(run), "Ray Train actors outlived their jobs"
    assert (run / "ray").is_dir()  # Ray Train's results live in the run folder
    assert_same_losses(reference_dir(tmp_path_factory), run, world_size=2, launched_by="ray")

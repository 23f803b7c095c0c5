"""``plait launch ... --dry-run``: the exact command of every backend, snapshot-tested, and every
user mistake refused before anything starts. Pure functions: nothing is launched here except
the two CLI round trips at the end (which must leave no process behind)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launch_helpers import CONFIG, ROOT, TINY, plait_launch

from plait.cli import _parser
from plait.errors import PlaitError
from plait.launch import deepspeed as ds
from plait.launch.accelerate import accelerate_config
from plait.launch.cli import build
from plait.launch.command import Entry
from plait.launch.slurm import sbatch_script

SNAP = Path(__file__).with_name("snapshots")
RUN = "/runs/r1"
CASES = {
    "torchrun_single": ["torchrun", "--nproc", "4", "--max-restarts", "3", "--rdzv-timeout", "60"],
    "torchrun_multinode": ["torchrun", "--hosts", "nodeA,nodeB", "--nproc", "2", "--port", "29511"],
    "torchrun_endpoint": ["torchrun", "--nnodes", "2", "--nproc", "8", "--rdzv-endpoint", "head:1234", "--rdzv-id", "job7"],
    "deepspeed_single": ["deepspeed", "--nproc", "2"],
    "deepspeed_multinode": ["deepspeed", "--hosts", "nodeA:2,nodeB:2", "--port", "29600"],
    "accelerate_single": ["accelerate", "--nproc", "2"],
    "accelerate_multinode_gpu": ["accelerate", "--hosts", "nodeA,nodeB", "--nproc", "8", "--gpu"],
    "slurm_single": ["slurm", "--nproc", "2"],
    "slurm_multinode_gpu": ["slurm", "--nnodes", "2", "--nproc", "8", "--gpu", "--time", "2:00:00", "--partition", "gpu", "--cpus-per-task", "32", "--job-name", "big"],
    "ray": ["ray", "--address", "10.0.0.1:6379", "--nproc", "4"],
}  # fmt: skip


def dry_run(args: list[str]) -> str:
    ns = _parser().parse_args(["launch", args[0], CONFIG, *TINY, "--run-dir", RUN, *args[1:]])
    ns.dry_run = True
    text = "\n".join(la.describe() for la in build(ns)) + "\n"
    return text.replace(sys.executable, "PYTHON").replace(str(Path.cwd()), "CWD")


@pytest.mark.parametrize("case", CASES)
def test_dry_run_command_matches_snapshot(case):
    got = dry_run(CASES[case])
    path = SNAP / f"launch_{case}.txt"
    if os.environ.get("PLAIT_UPDATE_SNAPSHOTS"):
        path.write_text(got)
    assert got == path.read_text(), f"{case} changed; if intended: PLAIT_UPDATE_SNAPSHOTS=1 pytest"


def test_every_backend_ends_in_the_same_entry_point():
    for case, args in CASES.items():
        text = dry_run(args)
        tail = f"{CONFIG} {' '.join(TINY)} log.run_dir={RUN}"
        module = "plait.launch.ray" if case == "ray" else "plait.train"
        assert f"{module} " in text and tail in text, case


def test_torchrun_flags_come_before_the_entry_point():
    argv = dry_run(CASES["torchrun_multinode"]).splitlines()[1].split()
    assert argv.index("-m", argv.index("torch.distributed.run")) > argv.index("--rdzv-endpoint")
    assert "nodeA:29511" in argv and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in argv


def test_hostfile_round_trip_and_bad_lines(tmp_path):
    hosts = ds.parse_hosts("nodeA:2,nodeB:2")
    (tmp_path / "hf").write_text("# cluster\n" + ds.hostfile_text(hosts))
    assert ds.read_hostfile(tmp_path / "hf") == hosts
    (tmp_path / "bad").write_text("nodeA 2\n")
    with pytest.raises(PlaitError, match="is not 'HOST slots=N'"):
        ds.read_hostfile(tmp_path / "bad")
    for bad in ("nodeA:x", "nodeA:0", "nodeA:2,nodeA:2"):
        with pytest.raises(PlaitError, match="HOST:SLOTS"):
            ds.parse_hosts(bad)
    with pytest.raises(PlaitError, match="not in the hostfile"):
        ds.this_node_rank(hosts, "nodeC")


def test_accelerate_config_is_valid_yaml_for_n_processes():
    cfg = yaml.safe_load(accelerate_config(nproc=2, nnodes=2, node_rank=1, main_ip="nodeA"))
    assert cfg["num_processes"] == 4 and cfg["machine_rank"] == 1 and cfg["use_cpu"] is True
    assert cfg["distributed_type"] == "MULTI_GPU"  # MULTI_CPU/--cpu would start ONE process


def test_sbatch_script_is_valid_bash_with_every_option(tmp_path):
    text = sbatch_script(
        Entry(CONFIG, tuple(TINY)), "/usr/bin/python3", nnodes=2, nproc=4, run_dir=tmp_path,
        workdir=ROOT, time="1-00:00:00", partition="p", gpus_per_node=4, cpus_per_task=8,
        mem="64G", exclusive=True, signal_time=300,
    )  # fmt: skip
    (tmp_path / "s.sh").write_text(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sh")]).returncode == 0
    sb = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH")]
    for opt in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=1-00:00:00",
                "--partition=p", "--cpus-per-task=8", f"--output={tmp_path}/slurm-%j.out",
                "--requeue", "--signal=B:USR1@300", "--mem=64G", "--exclusive"):  # fmt: skip
        assert opt in sb, opt
    # a port and rendezvous id of this job's own, per-node logs (%t), the requeue on USR1
    assert "PORT=$((15000 + SLURM_JOB_ID % 10000))" in text and "--rdzv-id $SLURM_JOB_ID" in text
    assert "--rdzv-endpoint $HEAD:$PORT" in text and "--nproc-per-node 4" in text
    assert f"--output={tmp_path}/slurm-%j-node%t.out" in text
    assert '    scontrol requeue "$SLURM_JOB_ID"' in text and "exit 75" in text
    # ranks per node share the task's CPUs by default
    assert "#SBATCH --cpus-per-task=3" in sbatch_script(
        Entry(CONFIG), "py", nnodes=1, nproc=3, run_dir=tmp_path, workdir=ROOT
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["torchrun", "--hosts", "a,b", "--nnodes", "3"], "--nnodes: 3 does not match the 2 hosts"),
        (["torchrun", "--nnodes", "2"], "needs a rendezvous"),
        (["torchrun", "--hosts", "a,a"], "names a host twice"),
        (["torchrun", "--partition", "x"], "--partition does not apply to torchrun"),
        (["accelerate", "--hosts", "a,b", "--nnodes", "3"], "--nnodes: 3 does not match"),
        (["deepspeed", "--hosts", "a:2,b:6"], "slots [2, 6] differ"),
        (["ray", "--nproc", "2"], "--address: missing"),
        (["ray", "--address", "h:1", "--hosts", "a"], "--hosts does not apply to ray"),
        (["slurm", "--time", "soon"], "--time: 'soon' is not allowed"),
        (["torchrun", "--nproc", "3"], "train.global_batch: 16 does not split over dp=3"),
    ],
)
def test_bad_backend_options_are_refused(args, needle):
    with pytest.raises(PlaitError) as e:
        dry_run(args)
    assert needle in str(e.value)


@pytest.mark.timeout(60)
def test_unknown_host_in_hostfile_fails_cleanly_before_any_rank(tmp_path):
    (tmp_path / "hostfile").write_text("localhost slots=1\nno-such-node.invalid slots=1\n")
    r = plait_launch("deepspeed", CONFIG, *TINY, "--run-dir", str(tmp_path / "run"),
                     "--hostfile", str(tmp_path / "hostfile"), timeout=50)  # fmt: skip
    assert r.returncode == 2, r.stdout
    assert "host 'no-such-node.invalid' does not resolve" in r.stdout
    assert "Traceback" not in r.stdout and not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
def test_cli_dry_run_prints_exactly_the_built_command(tmp_path):
    r = plait_launch("torchrun", CONFIG, *TINY, "--run-dir", RUN, "--nproc", "4",
                     "--max-restarts", "3", "--rdzv-timeout", "60", "--dry-run", timeout=50)  # fmt: skip
    assert r.returncode == 0, r.stdout
    want = dry_run(CASES["torchrun_single"])
    assert r.stdout.replace(sys.executable, "PYTHON").replace(str(ROOT), "CWD") == want
    assert not Path(RUN).exists()


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"TORCHELASTIC_RUN_ID": "x", "TORCHELASTIC_RESTART_COUNT": "0"}, "torchrun"),
        ({"PLAIT_LAUNCHER": "plait train --nproc", "TORCHELASTIC_RUN_ID": "x"}, "plait train --nproc"),
        ({"TORCHELASTIC_RUN_ID": "x", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}, "srun+torchrun"),
        ({"CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2"}, "deepspeed"),
        ({"ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "x"}, "accelerate"),
        ({"PLAIT_LAUNCHER": "ray", "ACCELERATE_TORCH_DEVICE": "cpu"}, "ray"),
        ({}, "RANK/WORLD_SIZE"),
    ],
)  # fmt: skip
def test_launched_by_names_each_launcher(extra, name):
    """run.json's launched_by: each launcher told apart by a variable only it sets."""
    from plait.dist import DistEnv

    env = DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **extra})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (1, 2, 1, name)


def test_srun_alone_and_no_launcher():
    from plait.dist import DistEnv

    srun = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "7"}
    assert DistEnv.from_environ(srun) == DistEnv(3, 4, 1, "srun")
    assert DistEnv.from_environ({}) == DistEnv(0, 1, 0, "single process")


def test_nproc_ranks_get_torchruns_thread_variable_with_plaits_share(monkeypatch):
    """``plait train --nproc`` sets OMP_NUM_THREADS for its CPU ranks before they start, as
    torchrun does (so every thread of a rank starts with it), to plait's per-rank share of the
    CPUs; a user's own value, one rank, and GPU runs are left alone."""
    from plait.config import load_config
    from plait.dist import cpu_threads_per_rank
    from plait.launch.local import _thread_env

    cpu = load_config(CONFIG, ["train.device=cpu"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert not _thread_env(cpu, 1) and "OMP_NUM_THREADS" not in os.environ
    assert _thread_env(cpu, 2)
    assert os.environ["OMP_NUM_THREADS"] == str(cpu_threads_per_rank(2))
    assert cpu_threads_per_rank(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert not _thread_env(cpu, 2) and os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not _thread_env(load_config(CONFIG, ["train.device=cuda"]), 2)
    assert "OMP_NUM_THREADS" not in os.environ

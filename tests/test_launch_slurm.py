"""``plait launch slurm`` against a real SLURM started here (Debian packages, installed by the
test when missing): the generated sbatch script is submitted, srun starts one torchrun per node
with the first node as rendezvous, and the run matches one process."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import CONFIG, TINY, assert_same_losses, free_port, plait_launch, reference_dir
from netns import ADDRS, two_nodes
from slurm_local import local_slurm


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


@pytest.mark.timeout(240)
def test_slurm_single_node_sbatch(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    with local_slurm(tmp_path / "slurm") as (env, pre):
        _submit(run, env, pre, "--nproc", "2", "--port", str(free_port()))
    assert_same_losses(
        reference_dir(tmp_path_factory), run, world_size=2, launched_by="srun+torchrun"
    )


@pytest.mark.timeout(240)
def test_slurm_two_nodes_over_veth(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    with two_nodes(tmp_path) as nodes, local_slurm(tmp_path / "slurm", nodes, ADDRS) as (env, pre):
        log = _submit(run, env, pre, "--nnodes", "2", "--nproc", "2", "--port", "29513")
    assert "plait: 2 node(s) nodeA,nodeB, rendezvous on nodeA:29513" in log, log[-2000:]
    assert_same_losses(
        reference_dir(tmp_path_factory), run, world_size=4, launched_by="srun+torchrun"
    )

"""A rendezvous port unique to a SLURM job: two jobs sharing a node must not meet on one fixed
port (29400 for torchrun's c10d, 29500 for MASTER_PORT). Torch-free: the sbatch script writes the
same formula in bash (plait.launch.slurm), the ranks read it here (plait.dist)."""

from __future__ import annotations

import os

BASE, SPAN = 15000, 10000  # 15000-24999: below Linux's ephemeral range (32768-60999)


def job_port(job_id: int | str) -> int:
    return BASE + int(job_id) % SPAN


def default_master_port() -> str:
    """MASTER_PORT when a launcher did not set it: the SLURM job's port + 1 (the job's c10d
    rendezvous has the port itself), else torch's usual 29500."""
    job = os.environ.get("SLURM_JOB_ID", "")
    return str(job_port(job) + 1) if job.isdigit() else "29500"

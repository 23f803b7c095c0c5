"""SLURM: an sbatch script whose ``srun`` starts one torchrun per node, all meeting at a c10d
rendezvous on the job's first node; ``plait launch slurm`` submits it with ``sbatch``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from plait.errors import PlaitError
from plait.launch.command import Entry, Launch
from plait.launch.torchrun import ENV

DEFAULT_PORT = 29400
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, H:M:S, D-H[:M[:S]] (sbatch's forms)


def sbatch_script(
    entry: Entry,
    python: str,
    *,
    nnodes: int,
    nproc: int,
    run_dir: Path,
    workdir: Path,
    job_name: str = "plait",
    time: str | None = None,
    partition: str | None = None,
    gpus_per_node: int = 0,
    cpus_per_task: int | None = None,
    port: int = DEFAULT_PORT,
    max_restarts: int = 0,
) -> str:
    """The batch script. One SLURM task per node; torchrun on that node starts ``nproc`` ranks."""
    if nnodes < 1 or nproc < 1:
        raise PlaitError(f"--nnodes {nnodes} / --nproc {nproc}: both must be >= 1")
    if gpus_per_node < 0:
        raise PlaitError(f"--gpus-per-node: {gpus_per_node} is not allowed; must be >= 0")
    if time is not None and not _TIME.match(time):
        raise PlaitError(f"--time: '{time}' is not allowed; use MINUTES, H:MM:SS or D-HH:MM:SS")
    out = Path(run_dir) / "slurm-%j.out"
    sb = [
        f"--job-name={job_name}",
        f"--nodes={nnodes}",
        "--ntasks-per-node=1",
        f"--chdir={workdir}",
        f"--output={out}",
        f"--error={out}",
    ]
    sb += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    sb += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    sb += [f"--time={time}"] if time else []
    sb += [f"--partition={partition}"] if partition else []
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes", "$SLURM_JOB_NUM_NODES"]
    torchrun += ["--nproc-per-node", str(nproc), "--rdzv-backend", "c10d"]
    torchrun += ["--rdzv-endpoint", f"$HEAD:{port}", "--rdzv-id", "$SLURM_JOB_ID"]
    torchrun += ["--max-restarts", str(max_restarts), "-m", *entry.module_args()]
    # $VARS stay unquoted so bash expands them; everything else is quoted
    cmd = " ".join(a if a.startswith("$") else shlex.quote(a) for a in torchrun)
    env = "".join(f"export {k}={v}\n" for k, v in ENV.items())
    return (
        "#!/bin/bash\n"
        + "".join(f"#SBATCH {s}\n" for s in sb)
        + "set -euo pipefail\n"
        + env
        + 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)  # rendezvous host\n'
        + f'echo "plait: $SLURM_JOB_NUM_NODES node(s) $SLURM_JOB_NODELIST, rendezvous on $HEAD:{port}"\n'
        + f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {cmd}\n"
    )


def sbatch_launch(script_path: Path, script: str, *, wait: bool = False) -> Launch:
    """``sbatch --parsable [--wait] SCRIPT``: prints the job id; --wait returns the job's exit code."""
    argv = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(script_path)]
    return Launch(argv, files={Path(script_path): script})

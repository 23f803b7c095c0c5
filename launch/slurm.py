"""SLURM: an sbatch script whose ``srun`` starts one torchrun per node, all meeting at a c10d
rendezvous on the job's first node; ``plait launch slurm`` submits it with ``sbatch``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from plait import job_port
from plait.errors import PlaitError
from plait.launch.command import Entry, Launch
from plait.launch.torchrun import ENV
from plait.preemption import EXIT_REQUEUE, MARKER

DEFAULT_SIGNAL_TIME = 120  # seconds before the time limit the job is told to save and requeue
_MEM = re.compile(r"^\d+[KMGT]?$")
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
    port: int | None = None,
    max_restarts: int = 0,
    signal_time: int = DEFAULT_SIGNAL_TIME,
    mem: str | None = None,
    exclusive: bool = False,
) -> str:
    """The batch script. One SLURM task per node; torchrun on that node starts ``nproc`` ranks,
    which share the task's CPUs (``--cpus-per-task``, default one per rank).

    Preemption (docs/design.md, "Signals and preemption"): ``--signal=B:USR1@signal_time`` warns
    the batch shell that much before the time limit, and SLURM's own preemption or ``scancel``
    sends it SIGTERM. The shell passes either on to srun as SIGTERM; the ranks finish their step
    and save, rank 0 leaves ``preempted.json``. After a USR1 the job requeues itself (``--requeue``,
    ``scontrol requeue``) and its next run resumes from that checkpoint; after a TERM it exits with
    the requeue status (SLURM requeues a preempted job itself)."""
    if nnodes < 1 or nproc < 1:
        raise PlaitError(f"--nnodes {nnodes} / --nproc {nproc}: both must be >= 1")
    if gpus_per_node < 0:
        raise PlaitError(f"--gpus-per-node: {gpus_per_node} is not allowed; must be >= 0")
    if time is not None and not _TIME.match(time):
        raise PlaitError(f"--time: '{time}' is not allowed; use MINUTES, H:MM:SS or D-HH:MM:SS")
    if signal_time < 0:
        raise PlaitError(f"--signal-time: {signal_time} is not allowed; must be >= 0 seconds")
    if mem is not None and not _MEM.match(mem):
        raise PlaitError(f"--mem: '{mem}' is not allowed; use MB or a number with K, M, G or T")
    out = Path(run_dir) / "slurm-%j.out"
    sb = [
        f"--job-name={job_name}",
        f"--nodes={nnodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus_per_task or nproc}",
        f"--chdir={workdir}",
        f"--output={out}",
        f"--error={out}",
        "--open-mode=append",  # a requeued run adds to the log instead of replacing it
        "--requeue",
        f"--signal=B:USR1@{signal_time}",
    ]
    sb += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    sb += [f"--mem={mem}"] if mem else []
    sb += ["--exclusive"] if exclusive else []
    sb += [f"--time={time}"] if time else []
    sb += [f"--partition={partition}"] if partition else []
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes", "$SLURM_JOB_NUM_NODES"]
    torchrun += ["--nproc-per-node", str(nproc), "--rdzv-backend", "c10d"]
    torchrun += ["--rdzv-endpoint", "$HEAD:$PORT", "--rdzv-id", "$SLURM_JOB_ID"]
    torchrun += ["--max-restarts", str(max_restarts), "-m", *entry.module_args()]
    # $VARS stay unquoted so bash expands them; everything else is quoted
    cmd = " ".join(a if a.startswith("$") else shlex.quote(a) for a in torchrun)
    env = "".join(f"export {k}={v}\n" for k, v in ENV.items())
    marker = shlex.quote(str(Path(run_dir) / MARKER))
    node_log = shlex.quote(str(Path(run_dir) / "slurm-%j-node%t.out"))  # %t: the node's task
    # the same formula as plait.job_port: two jobs on one node never share a port
    port_line = (
        f"PORT={port}\n"
        if port
        else f"PORT=$(({job_port.BASE} + SLURM_JOB_ID % {job_port.SPAN}))\n"
    )
    return (
        "#!/bin/bash\n"
        + "".join(f"#SBATCH {s}\n" for s in sb)
        + "set -uo pipefail\n"
        + env
        + 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)  # rendezvous host\n'
        + port_line
        + 'echo "plait: $SLURM_JOB_NUM_NODES node(s) $SLURM_JOB_NODELIST, rendezvous on $HEAD:$PORT'
        + ' (restart ${SLURM_RESTART_COUNT:-0})"\n'
        + f"rm -f {marker}\n"
        + f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 --output={node_log} {cmd} &\n"
        + "SRUN=$!\nSTOP=\n"
        + "# a signal to this shell reaches the ranks as SIGUSR1, which srun passes on (a SIGTERM\n"
        + "# would make srun end the step at once) and torchrun too: they save and stop\n"
        + "trap 'STOP=USR1; kill -USR1 $SRUN' USR1\n"
        + "trap 'STOP=TERM; kill -USR1 $SRUN' TERM\n"
        + "while wait $SRUN; RC=$?; kill -0 $SRUN 2>/dev/null; do :; done  # wait again after a trap\n"
        + f"if [ -f {marker} ]; then\n"
        + f'  echo "plait: $(cat {marker})"\n'
        # USR1 to this shell (B:) or to the steps (--signal without B:): the time runs out
        + f'  if [ "$STOP" = USR1 ] || {{ [ -z "$STOP" ] && grep -q SIGUSR1 {marker}; }}; then\n'
        + '    scontrol requeue "$SLURM_JOB_ID"\n  fi\n'
        + f"  exit {EXIT_REQUEUE}\n"
        + "fi\n"
        + "exit $RC\n"
    )


def sbatch_launch(script_path: Path, script: str, *, wait: bool = False) -> Launch:
    """``sbatch --parsable [--wait] SCRIPT``: prints the job id; --wait returns the job's exit code."""
    argv = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(script_path)]
    return Launch(argv, files={Path(script_path): script})

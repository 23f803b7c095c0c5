"""SLURM: an sbatch script whose ``srun`` starts one torchrun per node, all meeting at a c10d
rendezvous on the job's first node; ``plait launch slurm`` submits it with ``sbatch``."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from plait import job_port
from plait.errors import PlaitError
from plait.launch.command import (
    FORWARDED,
    GRACE_S,
    STOP_GRACE_S,
    Entry,
    Launch,
    handle,
)  # fmt: skip
from plait.launch.torchrun import ENV
from plait.preemption import EXIT_REQUEUE, MARKER

DEFAULT_SIGNAL_TIME = 120  # seconds before the time limit the job is told to save and requeue
_MEM = re.compile(r"^\d+[KMGT]?$")
_JOBID = re.compile(r"^(\d+)")  # sbatch --parsable: JOBID or JOBID;CLUSTER
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


def stop_command(jobid: str) -> list[str]:
    """What a signal to ``plait launch slurm --wait`` becomes: SIGTERM to the job's batch shell
    only, whose trap passes SIGUSR1 to the ranks; they save and the job ends with the requeue
    status without requeueing itself (a USR1 would requeue it, and ``--wait`` would wait on for
    its next run). The job's own processes stay under SLURM's control."""
    return ["scancel", "--batch", "--signal=TERM", jobid]


def cancel_command(jobid: str) -> list[str]:
    """The job did not end within the grace after :func:`stop_command`: cancel it outright."""
    return ["scancel", jobid]


def wait_for_job(launch: Launch, *, grace: float = GRACE_S) -> int:
    """Run ``sbatch --parsable --wait`` (:func:`sbatch_launch`), echoing its output; its first
    line is the job id. A SIGTERM, SIGINT, SIGHUP or SIGUSR1 to this process is passed to the job
    as :func:`stop_command` (once, as soon as the id is known) and the job waited for; after
    ``grace`` seconds it is cancelled (:func:`cancel_command`). Without this, the signal would end
    sbatch alone and the job would train on (docs/design.md, "Signals and preemption").
    Returns sbatch's exit status: the job's."""
    for path, text in launch.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    jobid: list[str] = []
    first: list[float] = []

    def record(signum, frame):  # only records: scancel runs from the loop below
        first[:] = first or [time.monotonic()]

    previous = handle(FORWARDED, record)
    try:
        # its own session: a Ctrl-C at the terminal reaches plait only, not sbatch
        proc = subprocess.Popen(
            launch.argv, env={**os.environ, **launch.env}, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
    except BaseException:
        handle(FORWARDED, previous)
        raise
    echo = threading.Thread(target=_echo, args=(proc.stdout, jobid), daemon=True)
    echo.start()
    sent = cancelled = False
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            if first and jobid and not sent:
                sent = subprocess.run(stop_command(jobid[0]), check=False).returncode == 0
            if first and jobid and not cancelled and time.monotonic() > first[0] + grace:
                cancelled = subprocess.run(cancel_command(jobid[0]), check=False).returncode == 0
            if first and time.monotonic() > first[0] + grace + STOP_GRACE_S:
                break  # SLURM did not end the job: sbatch goes below, the job is cancelled
    finally:
        handle(FORWARDED, previous)
        if proc.poll() is None:
            if jobid and not cancelled:
                subprocess.run(cancel_command(jobid[0]), check=False)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        echo.join(timeout=5)
    return proc.wait()


def _echo(stream, jobid: list[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        if not jobid and (m := _JOBID.match(line)):
            jobid.append(m.group(1))

"""Preemption: a signal asks the job to stop at the next step boundary with a checkpoint.

A rank that receives SIGTERM (``kill``, a scheduler's preemption or time limit), SIGUSR1 (SLURM's
``--signal=USR1@T``), SIGINT (Ctrl-C) or SIGHUP (a closed terminal) only records it; at the end
of the step every rank learns whether any rank got one (the trainer's one-number all-reduce, or
slots of its loss all-reduce where that spans every rank), so
all stop after the same step, save a checkpoint, and end with :data:`EXIT_REQUEUE`. Rank 0 writes :data:`MARKER` in the run
folder once the checkpoint is complete: the launchers read it to tell "stopped for preemption,
run me again" from a failure, because a launcher in between hides the ranks' exit codes
(docs/design.md, "Signals and preemption").

Torch-free: the launchers import it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

#: the exit status of a job stopped by a signal after saving: EX_TEMPFAIL of sysexits.h
#: ("temporary failure; the user is invited to retry"): rerun the same command to resume
EXIT_REQUEUE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
MARKER = "preempted.json"
#: set by torch's elastic agents (torchrun, accelerate, ``plait train --nproc``) in their ranks
ELASTIC_ENV = "TORCHELASTIC_RUN_ID"

_received: list[int] = []


class Preempted(Exception):
    """Raised by the trainer once the checkpoint of a signalled stop is complete."""

    def __init__(self, step: int, signame: str, checkpoint: str | None):
        self.step, self.signame, self.checkpoint = step, signame, checkpoint
        super().__init__(describe({"step": step, "signal": signame, "checkpoint": checkpoint}))

    @classmethod
    def from_marker(cls, info: dict) -> Preempted:
        return cls(info.get("step"), info.get("signal"), info.get("checkpoint"))


def _record(signum: int, frame) -> None:
    # a handler only records: the step in flight finishes, collectives stay matched
    _received.append(signum)


def install() -> dict[int, object] | None:
    """Record :data:`SIGNALS` instead of dying; returns the previous handlers for
    :func:`restore`. None outside the main thread (Python allows handlers only there: a worker
    thread, e.g. under Ray Train, keeps its launcher's handling)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _received.clear()
    return {s: signal.signal(s, _record) for s in SIGNALS}


def restore(previous: dict[int, object] | None) -> None:
    for s, h in (previous or {}).items():
        signal.signal(s, h)


def request(signum: int) -> None:
    """Record ``signum`` as if this process had received it: for a launcher whose ranks no
    signal can reach (Ray Train runs them in threads of processes Ray owns, plait.launch.ray)."""
    _received.append(signum)


def received() -> int:
    """The first signal this process recorded since :func:`install`, 0 when none."""
    return _received[0] if _received else 0


def signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status() -> int:
    """What a stopped rank exits with. Under a torch elastic agent 0: the agent treats any
    non-zero exit as a failure and restarts the whole group while ``--max-restarts`` remain,
    which would undo the stop; the agent then ends cleanly and plait's launcher turns the
    :data:`MARKER` into :data:`EXIT_REQUEUE`. Anywhere else :data:`EXIT_REQUEUE` itself."""
    return 0 if ELASTIC_ENV in os.environ else EXIT_REQUEUE


def write_marker(run_dir: Path, step: int, signum: int, checkpoint: str | None) -> None:
    info = {
        "step": step, "signal": signame(signum), "checkpoint": checkpoint,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
    }  # fmt: skip
    tmp = Path(run_dir) / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, Path(run_dir) / MARKER)


def read_marker(run_dir: Path) -> dict | None:
    try:
        info = json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def clear_marker(run_dir: Path) -> None:
    (Path(run_dir) / MARKER).unlink(missing_ok=True)


def describe(info: dict) -> str:
    """The one line a launcher prints for a marker."""
    ck = info.get("checkpoint")
    where = f"checkpoint {ck}" if ck else "nothing to save"
    return (
        f"stopped by {info.get('signal')} after step {info.get('step')} ({where}); run the same "
        f"command again to resume (exit status {EXIT_REQUEUE}: requeue)"
    )

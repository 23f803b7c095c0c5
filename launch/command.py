"""What every launcher shares: the one entry point, a printable command, and running it so
that nothing it started outlives it."""

from __future__ import annotations

import importlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_MODULE = "plait.train"
STOP_GRACE_S = 10  # after SIGTERM, before SIGKILL


def run_entry(function: str, *args):
    """Call ``plait.train.<function>`` in a launched process. Launchers name the training entry
    point, as every command line does (``python -m plait.train``), and never import the trainer
    themselves (pyproject's import contracts: launch sits above no trainer or engine)."""
    return getattr(importlib.import_module(ENTRY_MODULE), function)(*args)


@dataclass(frozen=True)
class Entry:
    """``python -m plait.train CONFIG k=v ...``: what every backend ends in."""

    config: str
    overrides: tuple[str, ...] = ()

    def module_args(self) -> list[str]:
        return [ENTRY_MODULE, self.config, *self.overrides]

    def python_argv(self, python: str) -> list[str]:
        return [python, "-m", *self.module_args()]


@dataclass
class Launch:
    """One command to run on one node: argv, extra environment, files it needs written first."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)
    node: str | None = None  # the host this command is for (multi-node), None: this machine

    def shell(self) -> str:
        """The exact command as one copy-pasteable shell line."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*env, shlex.join(self.argv)])

    def describe(self) -> str:
        head = f"# on {self.node}:\n" if self.node else ""
        files = "".join(
            f"# file {p}:\n{text.rstrip()}\n# end of {p}\n" for p, text in self.files.items()
        )
        return f"{head}{files}{self.shell()}"


#: torch's elastic agents (torchrun, accelerate, ``plait train --nproc``) pass these signals on to
#: their ranks and then end without a restart; SIGUSR1 (SLURM's ``--signal``) is added to torch's
#: default list, whose absence would kill the agent at once and leave its ranks behind
SIGNALS_ENV = "PET_SIGNALS_TO_HANDLE"  # torchrun's --signals-to-handle, read from the environment
SIGNALS_HANDLED = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
#: how long the ranks get, after a forwarded signal, to finish their step and save before what
#: is left is killed: more than torch's and DeepSpeed's own 30 s shutdown waits
GRACE_S = 90.0


def run(
    launch: Launch,
    *,
    cwd: str | None = None,
    grace: float = GRACE_S,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Write the files and run the command in its own session. A SIGTERM, SIGINT, SIGHUP or
    SIGUSR1 to this process is passed on to that session (the ranks stop after their step with a
    checkpoint, plait.preemption) and waited for, at most ``grace`` seconds from the first one.
    On any exit, whatever is left of the session, and every process it started (launchers such as
    torchrun start ranks in sessions of their own), is killed: no rank outlives the launch.
    ``stop``: polled while it runs; True ends it (SIGTERM, then SIGKILL after a grace)."""
    for path, text in launch.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    first: list[float] = []  # when the first signal was passed on
    box: list = []  # the child once started; a signal before that is passed on at its start

    def forward(signum, frame):
        first[:] = first or [time.monotonic()]
        if box:
            box[1].refresh()
            _kill_group(box[0].pid, signum)
        else:
            pending.append(signum)

    pending: list[int] = []
    previous = handle(FORWARDED, forward)
    try:
        proc = subprocess.Popen(
            launch.argv, env={**os.environ, **launch.env}, cwd=cwd, start_new_session=True
        )
    except BaseException:
        handle(FORWARDED, previous)
        raise
    tree = _Tree(proc.pid)
    box[:] = [proc, tree]
    for signum in pending:
        _kill_group(proc.pid, signum)
    try:
        while proc.poll() is None and not (first and time.monotonic() > first[0] + grace):
            try:  # the tree is re-read each poll: a launcher that dies hard still leaves
                proc.wait(timeout=0.2 if stop else 1.0)  # the pids of its ranks here
            except subprocess.TimeoutExpired:
                tree.refresh()
                if stop is not None and not first and stop():
                    proc.terminate()  # torchrun's agent stops its workers on SIGTERM
                    try:
                        proc.wait(timeout=STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        pass
                    break
        # after a passed-on signal the ranks may outlive their launcher (DeepSpeed's runner
        # dies at once while its ranks save): wait for them within the grace
        while first and tree.alive() and time.monotonic() < first[0] + grace:
            time.sleep(0.2)
    except BaseException:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        handle(FORWARDED, previous)
        tree.refresh()
        _kill_group(proc.pid, signal.SIGKILL)
        tree.kill()
    return proc.wait()


def child_pids(parent: int, needle: str) -> list[int]:
    """Live children of ``parent`` whose command line contains ``needle``."""
    out = []
    for pid, (ppid, _, _) in _proc_table().items():
        try:
            if ppid == parent and needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def handle(signals, handler):
    """Install ``handler`` (a callable, or a dict of previous handlers) where Python allows it."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    if isinstance(handler, dict):
        for s, h in handler.items():
            signal.signal(s, h)
        return {}
    return {s: signal.signal(s, handler) for s in signals}


class _Tree:
    """Every process descended from ``root``, by (pid, start time) so a reused pid is never
    mistaken for one of them. Read from /proc (Linux); elsewhere only the session is killed."""

    def __init__(self, root: int):
        self.root = root
        self.known: dict[int, str] = {}  # pid -> start time

    def refresh(self) -> None:
        table = _proc_table()
        frontier = [self.root, *self.known]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, start, _) in table.items():
                if ppid == parent and pid not in self.known:
                    self.known[pid] = start
                    frontier.append(pid)

    def _live(self) -> list[int]:
        table = _proc_table()
        return [p for p, st in self.known.items() if p in table and table[p][1] == st]

    def alive(self) -> bool:
        """A descendant, or a member of the root's process group, still runs (zombies do not
        count: a rank whose launcher died is reaped by whoever adopted it)."""
        return bool(self._live()) or any(g == self.root for _, _, g in _proc_table().values())

    def kill(self) -> None:
        for pid in self._live():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, start time, process group) of every live (not zombie) process."""
    out = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, ..., start time (the 20th field)
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            out[int(name)] = (int(fields[1]), fields[19], int(fields[2]))
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def python() -> str:
    return sys.executable

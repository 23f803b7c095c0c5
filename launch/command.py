"""What every launcher shares: the one entry point, a printable command, and running it so
that nothing it started outlives it."""

from __future__ import annotations

import importlib
import os
import shlex
import signal
import subprocess
import sys
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


def run(launch: Launch, *, cwd: str | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Write the files, run the command in its own session, and on any exit (normal, error,
    Ctrl-C) kill whatever is left of that session, so no rank outlives the launch. ``stop``:
    polled while it runs; True ends it (SIGTERM, then SIGKILL after a grace)."""
    for path, text in launch.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    proc = subprocess.Popen(
        launch.argv, env={**os.environ, **launch.env}, cwd=cwd, start_new_session=True
    )
    try:
        while stop is not None:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if stop():
                    proc.terminate()  # torchrun's agent stops its workers on SIGTERM
                    try:
                        return proc.wait(timeout=STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        _kill_group(proc.pid, signal.SIGKILL)
                        return proc.wait()
        return proc.wait()
    except BaseException:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def python() -> str:
    return sys.executable

"""One job per run folder: two jobs writing one folder interleave their metrics and delete each
other's checkpoint files. The lock is ``<run_dir>/.plait.lock``, held with ``flock`` by rank 0
(or by the launching parent of ``plait train --nproc``, which tells its ranks through
:data:`ENV`), and it names its holder. The kernel drops a flock when its process dies, so a lock
file left by a killed job is taken over, with a warning naming the job that left it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import warnings
from datetime import datetime, timezone
from pathlib import Path

from plait.errors import PlaitError

NAME = ".plait.lock"
ENV = "PLAIT_RUN_LOCK"  # the run folder a launching parent holds the lock of, for its ranks


class RunLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink while holding: a waiter re-checks the inode
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def held_by_parent(run_dir: Path) -> bool:
    """True in a rank whose launching parent holds this folder's lock."""
    return os.environ.get(ENV) == str(Path(run_dir).resolve())


def acquire(run_dir: Path) -> RunLock:
    """Take the run folder's lock, or raise :class:`PlaitError` naming the job that holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise PlaitError(
                f"run folder {str(run_dir)!r} is in use by {holder} (lock {str(path)!r}); wait "
                "for that job to end or pass another log.run_dir"
            ) from None
        try:  # the holder released (unlinked) it between our open and flock: take the new file
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    left = _read(fd)
    if left:
        warnings.warn(
            f"{str(path)!r} was left by {_describe(left)}, which is no longer running: taking "
            "the run folder over",
            stacklevel=2,
        )
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return RunLock(path, fd)


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return {"host": "?", "pid": "?", "started": "? (unreadable lock file)"}
    return data if isinstance(data, dict) else {}


def _describe(h: dict) -> str:
    return f"pid {h.get('pid', '?')} on host {h.get('host', '?')} (started {h.get('started', '?')})"

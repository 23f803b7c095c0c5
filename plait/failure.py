"""Why a rank failed, in one line, and whether trying again can help (docs/design.md, "When a
rank fails"). A rank that fails writes ``rank-R.json`` into the folder its launcher named in
``PLAIT_FAILURE_DIR``; the launcher reads it to print the cause as its last line and to end
the job at once, without a restart, when the error will repeat. Torch-free."""

from __future__ import annotations

import errno
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plait.errors import PlaitError

ENV = "PLAIT_FAILURE_DIR"

#: errors of the file system that a restart meets again: a full disk or quota, a read-only or
#: forbidden folder, a file too large for the process's limit
REPEATING_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@dataclass(frozen=True)
class Failure:
    rank: int
    message: str  # one line
    final: bool  # True: the same inputs fail the same way; a restart cannot help
    time: float = 0.0


def causes(exc: BaseException):
    """``exc``, what it was raised from, and the per-rank errors of a DCP CheckpointException
    (``failures``: rank -> exception or (exception, traceback)), depth first, each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for f in (getattr(e, "failures", None) or {}).values():
            todo.append(f[0] if isinstance(f, tuple) else f)
        todo += [e.__cause__, e.__context__]


def _root(exc: BaseException) -> BaseException | None:
    """The error a restart would meet again (a plait error or a repeating OSError), or None."""
    for e in causes(exc):
        if isinstance(e, PlaitError):
            return e
        if isinstance(e, OSError) and e.errno in REPEATING_ERRNOS:
            return e
    return None


def will_repeat(exc: BaseException) -> bool:
    return _root(exc) is not None


def one_line(exc: BaseException) -> str:
    """The cause in one line: the repeating root if any, else ``exc`` itself."""
    e = _root(exc) or exc
    text = " ".join(str(e).split())
    if isinstance(e, PlaitError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def rank_from_env() -> int:
    """This process's global rank as any launcher sets it (0 when none did)."""
    for key in ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def record(exc: BaseException, rank: int | None = None) -> None:
    """In a rank: write why it failed for the launcher (when one asked). Best effort: a full
    disk may refuse this file too; the launcher then falls back to the exit status."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    rank = rank_from_env() if rank is None else rank
    f = {"rank": rank, "message": one_line(exc), "final": will_repeat(exc), "time": time.time()}
    try:
        tmp = Path(folder) / f".rank-{rank}.json.tmp"
        tmp.write_text(json.dumps(f))
        os.replace(tmp, Path(folder) / f"rank-{rank}.json")  # whole or absent for the reader
    except OSError:
        pass


def read(folder: Path) -> list[Failure]:
    """Every failure the ranks recorded, final ones first (lowest rank first), then the rest
    earliest first."""
    found = []
    for p in Path(folder).glob("rank-*.json"):
        try:
            found.append(Failure(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda f: (not f.final, f.rank if f.final else f.time))


def pick(folder: Path, first_rank: int, fallback: str) -> Failure:
    """The failure to report: a final one if any rank recorded one, else what the rank the
    launcher saw fail first recorded, else ``fallback`` (it died without a word: killed, out of
    memory)."""
    found = read(folder)
    if found and found[0].final:
        return found[0]
    mine = [f for f in found if f.rank == first_rank]
    return mine[0] if mine else Failure(first_rank, fallback, final=False)


def clear(folder: Path) -> None:
    """Before a (re)start: forget the previous attempt's failures."""
    for p in Path(folder).glob("*rank-*.json*"):
        p.unlink(missing_ok=True)


def describe(f: Failure) -> str:
    return f"rank {f.rank}: {f.message}"


@contextmanager
def recorded():
    """Around a rank's whole run: any error is recorded (:func:`record`), then re-raised."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            record(e)
        raise

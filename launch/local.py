"""``plait train --nproc N``: start N local ranks through torch's elastic launch API, so a
newcomer needs no launcher. The config is validated here, before any process starts."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from plait import failure, preemption, resume, run_lock
from plait.config import Config
from plait.errors import PlaitError
from plait.launch.command import child_pids, handle, run_entry

AGENT_SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"
AGENT_SIGNALS = "SIGQUIT"  # the agent's own handling; SIGTERM/INT/HUP/USR1: _pass_on


def _worker(cfg_dict: dict[str, Any], return_state: bool, attempt: int = 0):
    """Runs in each child: rebuild the config (already validated) and train."""
    from plait.dist import LAUNCHER_ENV  # deferred: plait.dist imports torch (see run_local)

    os.environ[LAUNCHER_ENV] = "plait train --nproc"  # run.json's launched_by
    # restarts are run_local's (each a fresh elastic launch): the count torchrun would give
    os.environ["TORCHELASTIC_RESTART_COUNT"] = str(attempt)
    return run_entry("run_config", cfg_dict, return_state)


def run_local(cfg: Config, nproc: int, *, return_state: bool = False, max_restarts: int = 0):
    """Train on ``nproc`` local processes; returns rank 0's :class:`RunResult`."""
    # deferred: torch (preflight builds the meta model) loads only when a job starts, so the
    # plait parser (which imports this package) and --help stay instant
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _HAS_SIGNALS = "signals_to_handle" in LaunchConfig.__dataclass_fields__

    # deferred: preflight builds meta models (torch), not needed to build commands
    from plait.host_check import check_host
    from plait.preflight import default_run_dir, validate

    if nproc < 1:
        raise PlaitError(f"--nproc: {nproc} is not allowed; must be >= 1")
    validate(cfg, nproc)
    check_host(cfg, nproc, nproc)  # files, folders, device and memory, before any rank starts
    resume.check_before_launch(cfg)  # a refused config change, before any rank starts
    cfg_dict = cfg.to_dict()
    run_dir = default_run_dir(cfg)
    cfg_dict["log"]["run_dir"] = str(run_dir)  # one folder for all ranks
    # this process holds the run folder's lock across elastic restarts; its ranks skip it
    lock = run_lock.acquire(run_dir)
    os.environ[run_lock.ENV] = str(run_dir.resolve())
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # reliable restarts
    # SIGTERM, SIGINT, SIGHUP, SIGUSR1: passed on to the ranks, which stop after their step with a
    # checkpoint and return, so the agent collects them as usual. Torch's agent must not handle
    # these itself: it would stop reading the ranks' results, on which they wait to exit.
    saved_env = os.environ.get(AGENT_SIGNALS_ENV)
    os.environ[AGENT_SIGNALS_ENV] = AGENT_SIGNALS  # torch < 2.13 reads only this
    threads = _thread_env(cfg, nproc)
    preemption.clear_marker(run_dir)
    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex[:8],
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # port 0: pick a free one
        max_restarts=0,  # restarts are decided below: an error that will repeat ends the job
        monitor_interval=0.1,
        start_method="spawn",
        **({"signals_to_handle": AGENT_SIGNALS} if _HAS_SIGNALS else {}),
    )
    failures = Path(tempfile.mkdtemp(prefix="plait-failures-"))
    os.environ[failure.ENV] = str(failures)  # the ranks say why they failed (plait.failure)
    previous = handle(preemption.SIGNALS, _pass_on)
    try:
        for attempt in range(max_restarts + 1):
            failure.clear(failures)
            try:
                results = elastic_launch(lc, _worker)(cfg_dict, return_state, attempt)
                break
            except ChildFailedError as e:
                rank, fail = e.get_first_failure()
                cause = failure.pick(failures, rank, f"failed: {_last_line(fail)}")
                if cause.final or attempt == max_restarts:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise PlaitError(failure.describe(cause) + tries) from None
                print(
                    f"plait: {failure.describe(cause)}; restarting the ranks "
                    f"({attempt + 1} of {max_restarts})",
                    file=sys.stderr,
                    flush=True,
                )
                lc.run_id = uuid.uuid4().hex[:8]
    finally:
        handle(preemption.SIGNALS, previous)
        if saved_env is None:
            os.environ.pop(AGENT_SIGNALS_ENV, None)
        else:
            os.environ[AGENT_SIGNALS_ENV] = saved_env
        os.environ.pop(failure.ENV, None)
        if threads:
            os.environ.pop("OMP_NUM_THREADS", None)
        shutil.rmtree(failures, ignore_errors=True)
        os.environ.pop(run_lock.ENV, None)
        lock.release()
    if results[0].preempted and (info := preemption.read_marker(run_dir)) is not None:
        raise preemption.Preempted.from_marker(info)
    return results[0]


def _thread_env(cfg: Config, nproc: int) -> bool:
    """CPU runs: OMP_NUM_THREADS for the ranks, set before they start, as torchrun does (its value
    is plait's share, plait.dist.cpu_threads_per_rank, where torchrun's is 1). Set in the
    environment rather than by ``torch.set_num_threads`` in the rank, every thread of the rank
    (the data prefetch thread too) starts with it, not only the main one. A user's own value
    wins; returns whether it was set here (to be removed after the launch)."""
    from plait.dist import cpu_threads_per_rank, wants_cuda  # deferred: plait.dist imports torch

    if nproc == 1 or wants_cuda(cfg.train.device) or "OMP_NUM_THREADS" in os.environ:
        return False
    os.environ["OMP_NUM_THREADS"] = str(cpu_threads_per_rank(nproc))
    return True


def _last_line(failure) -> str:
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", str(msg))
    lines = [ln for ln in str(msg).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {failure.exitcode}"


def _pass_on(signum, frame) -> None:
    """To each rank (a child started by multiprocessing's spawn); before any rank exists the
    launch is abandoned (the agent's cleanup ends whatever it started)."""
    ranks = child_pids(os.getpid(), "spawn_main")
    if not ranks:
        raise SystemExit(128 + signum)
    for pid in ranks:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

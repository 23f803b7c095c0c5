"""Ray Train: a ``TorchTrainer`` whose N workers each call plait's ``train`` on a Ray cluster
the user names (``--address``). Ray Train starts the process group and sets RANK/WORLD_SIZE/
LOCAL_RANK/MASTER_ADDR in each worker, which plait's dist.py reads like any launcher's.

The driver runs as ``python -m plait.launch.ray ...`` so this backend, like the others, is one
printable command; Ray Train's results go inside the run dir.

A signal to the driver (SIGTERM, SIGINT, SIGHUP, SIGUSR1, as ``plait launch`` passes them on)
is a preemption: no signal can reach the ranks (Ray Train runs each in a thread of an actor
process that Ray owns, perhaps on another node, and Ray ends those on SIGTERM), so the driver
writes :data:`STOP_REQUEST` in the run folder, which every rank can read (they all write its
checkpoints), and a thread in each rank turns it into a recorded signal; the ranks then stop
after the same step with a checkpoint as under any launcher (plait.preemption).
docs/design.md, "Signals and preemption"."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from plait import preemption
from plait.config import load_config
from plait.errors import PlaitError
from plait.launch.command import Entry, Launch, run_entry

ENV = {"RAY_AUTH_MODE": "disabled"}  # a token would otherwise be written under ~/.ray
STOP_REQUEST = ".stop-request"  # in the run folder: the signal number the driver received
POLL_S = 0.2  # how often each rank looks for it: one stat, against steps of 0.1 s and more


def ray_launch(
    entry: Entry, python: str, *, address: str | None, workers: int, use_gpu: bool = False
) -> Launch:
    if not address:
        raise PlaitError(
            "--address: missing; give the Ray cluster's address (HOST:PORT from "
            "`ray start --head`, e.g. 10.0.0.1:6379)"
        )
    if workers < 1:
        raise PlaitError(f"--nproc: {workers} is not allowed; must be >= 1 Ray worker")
    argv = [python, "-m", "plait.launch.ray", "--address", address, "--workers", str(workers)]
    argv += ["--gpu"] if use_gpu else []
    return Launch([*argv, entry.config, *entry.overrides], dict(ENV))


def _worker(loop_config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: the process group and rank variables are already set."""
    from plait.dist import LAUNCHER_ENV  # deferred: plait.dist imports torch

    os.environ[LAUNCHER_ENV] = "ray"  # run.json's launched_by
    done = threading.Event()
    path = Path(loop_config["cfg"]["log"]["run_dir"]) / STOP_REQUEST
    threading.Thread(target=_watch, args=(path, done), daemon=True).start()
    try:
        run_entry("run_config", loop_config["cfg"])
    finally:
        done.set()


def _watch(path: Path, done: threading.Event) -> None:
    """Record the driver's stop request as a signal; the trainer checks for one at each step."""
    while not done.wait(POLL_S):
        try:
            signum = int(path.read_text())
        except (OSError, ValueError):  # not there yet (or half-written: read again)
            continue
        preemption.request(signum)
        return


def _fit_off_main_thread(trainer) -> None:
    """``trainer.fit()`` in a thread the main one waits on: called on the main thread, Ray Train
    replaces the SIGINT handler with one that aborts the run without a checkpoint."""
    box: list = []

    def fit() -> None:
        try:
            box.append(trainer.fit())
        except BaseException as e:  # re-raised on the main thread
            box.append(e)

    t = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    t.start()
    while t.is_alive():  # a timed join: the main thread runs signal handlers meanwhile
        t.join(timeout=0.5)
    if isinstance(box[0], BaseException):
        raise box[0]


def _on_signal(path: Path):
    def ask_ranks_to_stop(signum, frame):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(str(signum))
        os.replace(tmp, path)

    return ask_ranks_to_stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plait.launch.ray")
    ap.add_argument("--address", required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    # deferred: ray is an optional extra, and preflight loads torch only once a job starts
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # deferred: preflight builds meta models (torch), not needed to build commands
    from plait.preflight import default_run_dir, validate

    cfg = load_config(args.config, args.overrides)
    validate(cfg, args.workers)
    run_dir = default_run_dir(cfg).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    d["log"]["run_dir"] = str(run_dir)
    # workers may start in another directory (another node): give them the absolute paths
    request = run_dir / STOP_REQUEST
    request.unlink(missing_ok=True)  # left by a driver that was killed
    previous = {s: signal.signal(s, _on_signal(request)) for s in preemption.SIGNALS}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address=args.address)
        for s in preemption.SIGNALS:  # ray.init sets its own SIGTERM handler (sys.exit)
            signal.signal(s, _on_signal(request))
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"cfg": d},
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
            torch_config=TorchConfig(backend="nccl" if args.gpu else "gloo"),
            run_config=RunConfig(storage_path=str(run_dir / "ray"), name="train"),
        )
        _fit_off_main_thread(trainer)
    finally:
        ray.shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
        request.unlink(missing_ok=True)
    print(f"run folder: {run_dir}")
    # the ranks stopped after a checkpoint; `plait launch` prints the marker's line
    return preemption.EXIT_REQUEUE if preemption.read_marker(run_dir) is not None else 0


if __name__ == "__main__":
    sys.exit(main())

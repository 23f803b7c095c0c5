"""Time from command to first training step, per launcher, on the same tiny run (2 ranks, gloo).

    python bench/launch_startup.py [--slurm] [--ray] [--repeat N]

Prints ``name: ours X, baseline Y, ratio Z`` with the baseline ``plait train --nproc 2`` (torch's
elastic API in-process, no launcher). --slurm/--ray start a local SLURM (root; installs Debian
packages when missing) / Ray cluster the way the tests do."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from launch_helpers import CONFIG, TINY, free_port  # noqa: E402

FIRST = "step     1 |"


def first_step(argv: list[str], env: dict | None = None, watch: Path | None = None) -> float:
    """Seconds until the first step line appears on stdout (or in files matching ``watch``)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    seen, out = None, []
    if watch is None:
        for line in p.stdout:
            out.append(line)
            if FIRST in line and seen is None:
                seen = time.perf_counter() - t0
    else:
        while p.poll() is None and seen is None:
            if any(FIRST in f.read_text() for f in watch.parent.glob(watch.name)):
                seen = time.perf_counter() - t0
            time.sleep(0.05)
        out = [p.communicate()[0]]
    if p.wait() != 0 or seen is None:
        raise SystemExit(f"{argv[:6]} failed:\n{''.join(out)[-3000:]}")
    return seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slurm", action="store_true")
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plb"))
    plait = [sys.executable, "-m", "plait.cli"]
    n = iter(range(10**6))

    def run_dir() -> str:
        return str(tmp / f"r{next(n)}")

    def launch(backend: str, *opts: str) -> list[str]:
        return [
            *plait,
            "launch",
            backend,
            CONFIG,
            *TINY,
            "--nproc",
            "2",
            "--run-dir",
            run_dir(),
            *opts,
        ]

    cases = {
        "plait train --nproc 2": lambda: first_step([*plait, "train", CONFIG, *TINY, "--nproc", "2", "--run-dir", run_dir()]),
        "launch torchrun": lambda: first_step(launch("torchrun")),
        "launch deepspeed": lambda: first_step(launch("deepspeed", "--port", str(free_port()))),
        "launch accelerate": lambda: first_step(launch("accelerate", "--port", str(free_port()))),
    }  # fmt: skip
    with ExitStack() as stack:
        if a.slurm:
            from slurm_local import local_slurm

            env, pre = stack.enter_context(local_slurm(tmp / "slurm"))

            def slurm() -> float:
                rd = run_dir()
                argv = [*pre, *launch("slurm", "--wait")]
                argv[argv.index("--run-dir") + 1] = rd
                return first_step(argv, env, watch=Path(rd) / "slurm-*.out")

            cases["launch slurm (cluster up)"] = slurm
        if a.ray:
            from ray_local import ray_cluster

            addr, _, env_r = stack.enter_context(ray_cluster())
            cases["launch ray (cluster up)"] = lambda: first_step(
                launch("ray", "--address", addr), env_r
            )
        times = {k: min(f() for _ in range(a.repeat)) for k, f in cases.items()}
    base = times["plait train --nproc 2"]
    print("| launcher | s to first step |\n|---|---|")
    for k, t in times.items():
        print(f"| {k} | {t:.1f} |")
    for k, t in times.items():
        print(f"{k}: ours {t:.2f}s, baseline {base:.2f}s, ratio {t / base:.2f}")


if __name__ == "__main__":
    main()

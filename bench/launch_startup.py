"""Time from command to first training step (2 ranks, gloo, the same tiny gpt run).

    python bench/launch_startup.py [--rounds N] [--launchers] [--slurm] [--ray]

Default: ``plait train configs/gpt_tiny.yaml --nproc 2`` against the same model written by
hand under torchrun (bench/startup_baseline.py), run in alternating rounds so a busy machine
slows both alike; prints each round, the medians and their ratio (the target is <= 1.2).
--launchers adds every ``plait launch`` backend, compared with ``plait train --nproc 2``;
--slurm/--ray start a local SLURM (root; installs Debian packages when missing) / Ray cluster
the way the tests do."""

from __future__ import annotations

import argparse
import os
import statistics
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
# the config as a user runs it (its TensorBoard and wandb defaults included), logging every step
RUN = ["train.steps=3", "optim.warmup_steps=1", "log.every=1", "log.progress=off"]


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


def against_torchrun(rounds: int, tmp: Path) -> None:
    """plait train --nproc 2 vs the hand-written torchrun script, alternating."""
    from plait.data.text import read_corpus

    corpus = tmp / "corpus.bin"  # the hand-written script reads prepared bytes, as nanoGPT does
    corpus.write_bytes(read_corpus())
    plait = [sys.executable, "-m", "plait.cli", "train", CONFIG, *RUN, "--nproc", "2"]
    hand = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", "bench/startup_baseline.py", str(corpus), "3"]  # fmt: skip
    ours, base = [], []
    for r in range(rounds):
        ours.append(first_step([*plait, "--run-dir", str(tmp / f"r{r}")]))
        base.append(first_step(hand))
        print(f"round {r + 1}: plait {ours[-1]:.2f}s, torchrun script {base[-1]:.2f}s", flush=True)
    a, b = statistics.median(ours), statistics.median(base)
    print(f"plait train --nproc 2 (medians): ours {a:.2f}s, baseline {b:.2f}s, ratio {a / b:.2f}")


def launchers(a: argparse.Namespace, tmp: Path) -> None:
    plait = [sys.executable, "-m", "plait.cli"]
    n = iter(range(10**6))

    def run_dir() -> str:
        return str(tmp / f"l{next(n)}")

    def launch(backend: str, *opts: str) -> list[str]:
        return [*plait, "launch", backend, CONFIG, *TINY, "--nproc", "2", "--run-dir", run_dir(),
                *opts]  # fmt: skip

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
        times = {k: [] for k in cases}
        for _ in range(a.rounds):  # alternating: one of each per round
            for k, f in cases.items():
                times[k].append(f())
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plait train --nproc 2"]
    print("| launcher | s to first step |\n|---|---|")
    for k, t in med.items():
        print(f"| {k} | {t:.1f} |")
    for k, t in med.items():
        print(f"{k}: ours {t:.2f}s, baseline {base:.2f}s, ratio {t / base:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--launchers", action="store_true", help="time every plait launch backend")
    ap.add_argument("--slurm", action="store_true")
    ap.add_argument("--ray", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="plb"))
    if a.launchers or a.slurm or a.ray:
        launchers(a, tmp)
    else:
        against_torchrun(a.rounds, tmp)


if __name__ == "__main__":
    main()

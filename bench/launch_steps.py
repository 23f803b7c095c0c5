"""Per-step time (not start-up) of the same run through ``plait train --nproc 2`` and through
``torchrun --nproc-per-node 2 -m plait.train``: the launch path's own cost per step.

    python bench/launch_steps.py [--rounds 3] [--steps 12] [CONFIG] [key=value ...]

Both commands run the same config and overrides (default: gpt small at tp=2, the figure
bench/tp_vs_dp.py --raw reports) in alternating rounds, so a busy machine slows both alike; each
round's figure is the median ``step_time_s`` of rank 0 over steps 3.. (metrics.jsonl, every
step logged), and the ``eta_s`` of the second-to-last step gives the loop's wall time per step
(between-step work included); the fastest step of each run is the least disturbed by other
jobs on a shared machine (whole runs cannot be interleaved step by step). Prints each round, then
min/median/max of the per-round ratios plait / torchrun.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [
    "configs/gpt_small.yaml", "parallel.tp=2", "data.seq_len=128", "train.global_batch=8",
    "train.eval_every=0", "train.eval_batches=1", "optim.warmup_steps=1",
    "log.tensorboard=false", "log.wandb=off", "log.progress=off",
]  # fmt: skip


def per_step(argv: list[str], run_dir: Path, steps: int) -> tuple[float, float, float]:
    """(median step_time_s over steps 3.., loop wall seconds per step, fastest step) of one run."""
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{argv[:8]} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "step_time_s" in r]
    st = statistics.median(r["step_time_s"] for r in recs[2:])
    # eta_s = elapsed / done * (steps - done): elapsed since step 1 started, at step steps - 1
    r = recs[-2]
    wall = r["eta_s"] * r["step"] / (steps - r["step"]) / r["step"]
    return st, wall, min(r["step_time_s"] for r in recs[2:])


def main() -> None:
    a = sys.argv[1:]

    def opt(k: str, d: int) -> int:
        if k not in a:
            return d
        i = a.index(k)
        v = int(a[i + 1])
        del a[i : i + 2]
        return v

    rounds, steps = opt("--rounds", 3), opt("--steps", 12)
    args = a or DEFAULT
    run = [*args, f"train.steps={steps}", "log.every=1"]
    with tempfile.TemporaryDirectory(prefix="plait-launch-steps-") as d:
        ours, base = rounds_of(Path(d), run, rounds, steps)
    for i, what in ((0, "step_time_s"), (1, "loop wall per step"), (2, "fastest step")):
        rs = sorted(o[i] / b[i] for o, b in zip(ours, base))
        print(
            f"launch_path[{what}, plait train --nproc 2 vs torchrun -m plait.train]: ours "
            f"{statistics.median(o[i] for o in ours):.3f} s, baseline "
            f"{statistics.median(b[i] for b in base):.3f} s, ratio min {rs[0]:.3f} median "
            f"{statistics.median(rs):.3f} max {rs[-1]:.3f} ({rounds} rounds)"
        )


def rounds_of(tmp: Path, run: list[str], rounds: int, steps: int) -> tuple[list, list]:
    """Alternating rounds; returns the per-round figures of plait's path and torchrun's."""
    ours, base = [], []
    for r in range(rounds + 1):  # round 0 warms caches (CPU peak file, page cache) for both
        d1, d2 = tmp / f"p{r}", tmp / f"t{r}"
        plait = [sys.executable, "-m", "plait.cli", "train", *run, f"log.run_dir={d1}",
                 "--nproc", "2"]  # fmt: skip
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", "-m", "plait.train", *run, f"log.run_dir={d2}"]  # fmt: skip
        pair = [(plait, d1, ours), (torchrun, d2, base)]
        if r % 2:  # alternate which goes first
            pair.reverse()
        got = {}
        for argv, d, out in pair:
            got[id(out)] = per_step(argv, d, steps)
            if r:
                out.append(got[id(out)])
        if r:
            (s1, w1, m1), (s2, w2, m2) = got[id(ours)], got[id(base)]
            print(f"round {r}: step plait {s1:.3f}s torchrun {s2:.3f}s ({s1 / s2:.3f}); "
                  f"loop wall/step {w1:.3f}s {w2:.3f}s ({w1 / w2:.3f}); "
                  f"fastest step {m1:.3f}s {m2:.3f}s ({m1 / m2:.3f})", flush=True)  # fmt: skip
    return ours, base


if __name__ == "__main__":
    main()

"""Pipeline bubble: measured (real gloo ranks, plait's timer around every stage action) vs
simulated (plait.pipeline.simulate with the measured mean action costs) vs closed form, for
GPipe, 1F1B, Interleaved1F1B and ZBVZeroBubble at p=4; and each schedule's step time relative
to GPipe. All configs run in one launched group of 4 ranks. Writes the timeline PNGs.

    python bench/pp_bubble.py [--m 4 8 16] [--out runs/pp_bubble]

On a CPU box with fewer cores than ranks the measured numbers include CPU contention.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import run_distributed_many  # noqa: E402
from plait.pipeline.simulate import Costs, simulate  # noqa: E402

P = 4
SCHEDULES = {"GPipe": 1, "1F1B": 1, "Interleaved1F1B": 2, "ZBVZeroBubble": 2}
MODEL = ["model.dim=128", "model.ffn_dim=384", "model.n_heads=4", "data.name=synthetic",
         "train.steps=3", "train.eval_batches=1", "log.pp_timeline=true"]  # fmt: skip


def closed_form(name: str, m: int, v: int) -> float:
    if name in ("GPipe", "1F1B"):
        return (P - 1) / (m + P - 1)
    if name == "Interleaved1F1B":
        return (P - 1) / (v * m + P - 1)
    return simulate(name, P, m, v=v, costs=Costs()).bubble  # ZBV: no closed form; unit costs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--out", default="runs/pp_bubble")
    ap.add_argument("--batch", type=int, default=64, help="global batch (samples)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sample")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [(n, m) for m in args.m for n in SCHEDULES]
    cfgs = [
        MODEL + [f"train.global_batch={args.batch}", f"data.seq_len={args.seq}", f"parallel.pp={P}", f"parallel.pp_schedule={n}",
                 f"parallel.pp_virtual_stages={SCHEDULES[n]}", f"parallel.pp_microbatches={m}"]
        for n, m in keys
    ]  # fmt: skip
    results = run_distributed_many(cfgs, P, out / "runs", timeout=1800)
    info = {}
    for (n, m), res in zip(keys, results):
        d = json.loads((res.run_dir / "pp_timeline.json").read_text())
        info[n, m] = d
        for suffix in ("", "_sim"):
            shutil.copy(res.run_dir / f"pp_timeline{suffix}.png", out / f"{n}_m{m}{suffix}.png")
    print(f"{'schedule':16} {'m':>3} {'measured':>9} {'simulated':>9} {'closed':>7} {'step_s':>7}")
    for n, m in keys:
        d = info[n, m]
        print(f"{n:16} {m:3d} {d['measured_bubble']:9.3f} {d['simulated_bubble']:9.3f} "
              f"{closed_form(n, m, SCHEDULES[n]):7.3f} {d['measured_step_s']:7.3f}")  # fmt: skip
    for n, m in keys:
        d = info[n, m]
        print(f"pp_bubble {n} m={m}: ours {d['measured_bubble']:.3f}, baseline "
              f"{d['simulated_bubble']:.3f}, ratio {d['measured_bubble'] / max(d['simulated_bubble'], 1e-9):.2f}")  # fmt: skip
    for n, m in keys:
        ours, base = info[n, m]["measured_step_s"], info["GPipe", m]["measured_step_s"]
        print(
            f"pp_step_time {n} m={m}: ours {ours:.3f}s, baseline GPipe {base:.3f}s, ratio {ours / base:.2f}"
        )


if __name__ == "__main__":
    main()

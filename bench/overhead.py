"""plait's per-step overhead against a hand-written loop doing the same work with the same
PyTorch primitives (docs/design.md promise 5: within a few percent).

Both sides: the same gpt model (built and initialised by plait), the same batches, AdamW,
clip_grad_norm_, cosine LambdaLR, one process. Steps alternate between the two sides so machine
noise hits both alike; the median step time is compared.

    python bench/overhead.py [preset] [steps]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch

from plait.config import load_config
from plait.data import build_data
from plait.mesh import ParallelDims
from plait.models import build_model
from plait.optim import build_optimizer, build_scheduler
from plait.trainer import _Step


def main(preset: str = "small", steps: int = 30) -> None:
    run_dir = tempfile.mkdtemp()
    cfg = load_config(
        None,
        [f"model.preset={preset}", "data.seq_len=128", "train.global_batch=8", f"train.steps={2 * steps}",
         "log.wandb=off", "log.tensorboard=false", f"log.run_dir={run_dir}"],
    )  # fmt: skip
    dims = ParallelDims.from_config(cfg, 1)
    ours = _Step(cfg, dims, None, torch.device("cpu"), 0)

    # the hand-written baseline
    model = build_model(cfg, "cpu")
    model.init_weights(cfg.train.seed)
    data = build_data(cfg, model)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, cfg.train.steps)

    def baseline(step: int) -> float:
        t0 = time.perf_counter()
        b = data.sample("train", step, 0, 8, 8)
        loss = torch.nn.functional.cross_entropy(
            model(b["input"]).flatten(0, 1), b["target"].flatten()
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - t0

    t_ours, t_base = [], []
    for s in range(steps + 3):
        a = ours.run(s)["step_time_s"]
        b = baseline(s)
        if s >= 3:  # warm-up
            t_ours.append(a)
            t_base.append(b)
    mo, mb = statistics.median(t_ours), statistics.median(t_base)
    print(
        f"step_time gpt {preset} b8x128 (median of {steps}): ours {mo * 1e3:.1f} ms, baseline {mb * 1e3:.1f} ms, ratio {mo / mb:.3f}"
    )


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["small"]), *(int(a) for a in sys.argv[2:3]))

"""Step time of tensor parallel (tp=2) vs data parallel (dp=2) for gpt ``small`` on CPU/gloo,
both through plait's own trainer and local launcher (2 processes, same global batch).

Per rank both do half the FLOPs of the step (DP: half the batch, full weights; TP: full batch,
half of every weight). What differs is communication and overhead: DP all-reduces the gradients
once per step (~params x 4 bytes, bucketed, overlapped with backward); TP all-reduces the
(b, s, h) activations 4 times per layer on the critical path, and every sharded op goes through
DTensor's Python dispatch, which on CPU with small matrices is comparable to the matmul itself.
So on CPU TP is expected to be slower than DP; TP pays off where a model does not fit one device
or DP's batch per rank gets too small, on a fast interconnect (NVLink), not on gloo.

    python bench/tp_vs_dp.py [steps]
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from plait.config import load_config
from plait.launch import run_local

COMMON = [
    "model.preset=small",
    "data.seq_len=128",
    "train.global_batch=8",
    "train.eval_batches=1",
    "log.wandb=off",
    "log.tensorboard=false",
    "log.progress=off",
]


def step_time(layout: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(None, [*COMMON, f"train.steps={steps}", f"log.run_dir={d}", *layout])
        res = run_local(cfg, 2)
    return statistics.median(m["step_time_s"] for m in res.metrics[2:])  # skip warm-up


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    tp = step_time(["parallel.tp=2", "parallel.dp_shard=1"], steps)
    tp_sp = step_time(
        ["parallel.tp=2", "parallel.dp_shard=1", "parallel.sequence_parallel=true"], steps
    )
    dp = step_time(["parallel.dp_shard=2"], steps)
    print(
        f"gpt_small_step_time[tp=2 vs dp=2]: ours {tp:.3f} s, baseline {dp:.3f} s, ratio {tp / dp:.2f}"
    )
    print(
        f"gpt_small_step_time[tp=2+sp vs dp=2]: ours {tp_sp:.3f} s, baseline {dp:.3f} s, ratio {tp_sp / dp:.2f}"
    )


if __name__ == "__main__":
    main()

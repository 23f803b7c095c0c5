"""Your own training loop around plait.parallelize (like accelerate's prepare): plait shards
the model (here FSDP2 over tensor parallel) and tells the loop its data-parallel rank; the loop
does the rest and gets one process's losses under any layout.

    python examples/own_loop.py                                        # one process
    torchrun --nproc-per-node 4 examples/own_loop.py dp_shard=2 tp=2 zero_stage=2
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import plait

sys.path.insert(0, str(Path(__file__).parent))
from own_model import TinyDecoder  # noqa: E402 - the model written against the contract

GLOBAL_BATCH, SEQ, STEPS = 8, 16, 6


def batch(step: int, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Rows lo:hi of step ``step``'s global batch: a pure function of the step, so every layout
    sees the same samples."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(256, (GLOBAL_BATCH, SEQ + 1), generator=g)[lo:hi]
    return {"input": tokens[:, :-1], "target": tokens[:, 1:]}


def run(layout: dict, ckpt_dir: str | None = None) -> tuple[list[float], plait.Parallel]:
    par = plait.parallelize(TinyDecoder, layout, seed=0)
    opt = torch.optim.AdamW(par.model.parameters(), lr=1e-3, foreach=False)
    per_rank = GLOBAL_BATCH // par.dp_size
    lo = par.dp_rank * per_rank
    losses = []
    for step in range(STEPS):
        b = {k: v.to(par.device) for k, v in batch(step, lo, lo + per_rank).items()}
        with par.loss_context():  # vocabulary-sharded logits under tp
            loss_sum = par.loss(par.model(b["input"]), b)  # the model's summed loss
            # the gradient of the global mean: gradients are averaged over dp_size ranks
            (loss_sum * par.dp_size / (GLOBAL_BATCH * SEQ)).backward()
        opt.step()
        opt.zero_grad()
        total = loss_sum.detach().clone()
        if par.dp_size > 1:
            torch.distributed.all_reduce(total, group=par.mesh.dp.get_group())
        losses.append(total.item() / (GLOBAL_BATCH * SEQ))
    if ckpt_dir:  # any layout can load it back (plait.load_checkpoint) or export it
        plait.save_checkpoint(ckpt_dir, STEPS, par.model, opt)
    return losses, par


if __name__ == "__main__":
    layout = dict(kv.split("=") for kv in sys.argv[1:])
    losses, _ = run({k: int(v) for k, v in layout.items()})
    print("losses:", [round(x, 4) for x in losses])

"""The hand-written reference for bench/launch_startup.py: the same gpt tiny model, data bytes,
optimizer and batch as ``plait train configs/gpt_tiny.yaml --nproc 2``, written the way one
would by hand under torchrun (DDP over gloo, a prepared corpus file, no checks, no logging).

    torchrun --nproc_per_node 2 bench/startup_baseline.py CORPUS_FILE STEPS
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from plait.models.gpt import GPT, PRESETS, GPTArgs

SEQ, BATCH = 128, 16


def main() -> None:
    corpus_file, steps = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    text = torch.frombuffer(bytearray(open(corpus_file, "rb").read()), dtype=torch.uint8).long()
    torch.manual_seed(0)
    model = GPT(GPTArgs(**PRESETS["tiny"], max_seq_len=SEQ))
    model.init_weights(0)
    model = DDP(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    local = BATCH // world
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        offs = torch.randint(0, len(text) - SEQ - 1, (BATCH,), generator=g)
        offs = offs[rank * local : (rank + 1) * local]
        win = torch.stack([text[o : o + SEQ + 1] for o in offs.tolist()])  # (b, T+1)
        logits = model(win[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), win[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            print(f"step {step + 1:>5} | loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""What the communication benches (tp_comm, cp_comm, ep_comm) share: running a function on N
spawned gloo ranks on this machine, and the per-rank ring volume of one functional collective."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def ring_bytes(func, args, out, n: int) -> float:
    """Per-rank wire bytes of one functional collective (as seen by a dispatch mode) on a ring
    of ``n`` ranks: all-reduce 2(n-1)/n of its input, all-gather (n-1)/n of its output,
    reduce-scatter (n-1)/n of its input; anything else 0."""
    name = func._overloadpacket.__name__
    if "all_reduce" in name:
        t = args[0]
        return 2 * (n - 1) / n * t.numel() * t.element_size()
    if "all_gather" in name:
        return (n - 1) / n * out.numel() * out.element_size()
    if "reduce_scatter" in name:
        t = args[0]
        return (n - 1) / n * t.numel() * t.element_size()
    return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, fn: Callable[[int, int], Any], q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        got = fn(rank, world)
        if rank == 0:
            q.put(got)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[[int, int], Any], world: int) -> Any:
    """``fn(rank, world)`` on ``world`` spawned gloo ranks inside one process group; rank 0's
    result (small: it crosses a queue). ``fn`` must be importable by name (module level)."""
    q = mp.get_context("spawn").Queue()
    mp.start_processes(_rank, args=(world, _free_port(), fn, q), nprocs=world, start_method="spawn")
    return q.get()

"""The one place that knows how a process learns its rank and which device/backend it uses.

Every launcher ends in the same entry point; this reads whatever it set: torchrun, DeepSpeed's
launcher, accelerate and Ray Train (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or SLURM's
srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). No variable set: one process, no group.
Which launcher it was (run.json's ``launched_by``) is told by a variable only that one sets.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import re
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from plait.errors import ConfigError, PlaitError
from plait.job_port import default_master_port

# set in each rank by plait's own launchers (plait.launch.local, plait.launch.ray)
LAUNCHER_ENV = "PLAIT_LAUNCHER"


def launcher_name(env: dict[str, str]) -> str:
    """The launcher that set RANK/WORLD_SIZE, by a variable only it sets: accelerate launch
    (ACCELERATE_MIXED_PRECISION; it starts ranks through torch elastic, so it is checked
    before torchrun), DeepSpeed's launcher (CROSS_RANK, deepspeed/launcher/launch.py),
    torchrun (TORCHELASTIC_RUN_ID); plait's own launchers name themselves."""
    if env.get(LAUNCHER_ENV):
        return env[LAUNCHER_ENV]
    if "ACCELERATE_MIXED_PRECISION" in env:
        return "accelerate"
    if "CROSS_RANK" in env:
        return "deepspeed"
    if "TORCHELASTIC_RUN_ID" in env:  # plait's sbatch script: srun starts torchrun per node
        return "srun+torchrun" if "SLURM_JOB_ID" in env else "torchrun"
    return "RANK/WORLD_SIZE"  # another launcher, or variables set by hand


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single process"

    @staticmethod
    def from_environ(env: dict[str, str] | None = None) -> DistEnv:
        env = dict(os.environ if env is None else env)
        if "RANK" in env and "WORLD_SIZE" in env:
            return DistEnv(
                int(env["RANK"]),
                int(env["WORLD_SIZE"]),
                int(env.get("LOCAL_RANK", 0)),
                launcher_name(env),
            )
        if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
            return DistEnv(
                int(env["SLURM_PROCID"]),
                int(env["SLURM_NTASKS"]),
                int(env.get("SLURM_LOCALID", 0)),
                "srun",
            )
        return DistEnv()


def slurm_master_addr(nodelist: str) -> str:
    """First host of a SLURM nodelist such as 'node[03-05,07],gpu1' -> 'node03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def wants_cuda(kind: str) -> bool:
    """Whether ``train.device`` asks for CUDA here (``auto``: if a device is visible)."""
    return kind == "cuda" or (kind == "auto" and torch.cuda.is_available())


def pick_device(kind: str, local_rank: int) -> torch.device:
    if wants_cuda(kind):
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device: 'cuda' is not allowed here; no CUDA device is visible (use 'cpu' or 'auto')"
            )
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_threads_per_rank(local: int) -> int:
    """This node's share of the CPUs for one of its ``local`` ranks: the CPUs this process may
    run on (SLURM's --cpus-per-task, taskset), not the machine's, split between the ranks."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // max(1, local))


def set_cpu_threads(env: DistEnv, device: torch.device) -> None:
    """Share the cores between the ranks of this node (torchrun's OMP_NUM_THREADS rule):
    N ranks each running all-cores intra-op pools oversubscribe the CPU and stall collectives.
    ``plait train --nproc`` sets OMP_NUM_THREADS to the same share before its ranks start
    (plait.launch.local), as torchrun does; this covers every other launcher."""
    if device.type != "cpu" or env.world_size == 1 or "OMP_NUM_THREADS" in os.environ:
        return
    local = int(
        os.environ.get(
            "LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", str(env.world_size))
        ).split("(")[0]
    )
    torch.set_num_threads(cpu_threads_per_rank(local))


def keep_cpu_heap(device: torch.device) -> None:
    """Keep freed CPU memory for reuse instead of returning it to the OS (glibc only).

    glibc serves allocations above its mmap threshold (at most 32 MB) with fresh mmap'd pages
    and unmaps them on free, so buffers allocated anew every step (FSDP2's all-gather and
    reduce-scatter buffers, gradients, the optimizer's temporaries) pay their page faults again
    every step: measured, allocating and filling 40 MB took 18.9 ms, 8.9 ms with freed memory
    kept in the heap. This is what the CUDA caching allocator does on GPU. The process's RSS
    then stays at its peak; a user's own MALLOC_MMAP_MAX_ setting wins."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, not per-allocation mmap
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and never trimmed back to the OS
    except (OSError, AttributeError):  # not glibc: its allocator's defaults stay
        return


#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4

#: set unless the user did: a hung collective errors out (instead of hanging) and dumps the
#: last collectives of every rank to /tmp/nccl_trace_rank_<r> (read with torch's fr_trace)
NCCL_DEBUG_ENV = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
}


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """nccl on CUDA, gloo on CPU; the timeout bounds how long a dead peer can stall a collective."""
    if env.world_size == 1 or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_PORT", default_master_port())  # job-unique under SLURM
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = slurm_master_addr(
            os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        )
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # nccl's flight recorder, dumped when a collective times out
        for k, v in NCCL_DEBUG_ENV.items():
            os.environ.setdefault(k, v)
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if env.rank != 0:
        _wait_for_store(addr, port, timeout_s)
    try:
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    except dist.DistNetworkError as e:
        if "EADDRINUSE" not in str(e):
            raise
        raise PlaitError(
            f"MASTER_PORT: port {port} on {addr} is in use (another job or program listens "
            "there); set MASTER_PORT to a free port"
        ) from None


def _wait_for_store(addr: str, port: int, timeout_s: float) -> None:
    """Reach rank 0's store within ``timeout_s``, else one line naming the port. torch's store
    client waits forever on a port whose listener never answers (another program holds it), so
    the connection is tried in a thread the caller stops waiting for (written by hand: torch
    has no bounded connect)."""
    box: list = []

    def connect() -> None:
        try:
            box.append(
                dist.TCPStore(
                    addr,
                    port,
                    is_master=False,
                    wait_for_workers=False,
                    timeout=datetime.timedelta(seconds=timeout_s),
                )  # fmt: skip
            )
        except Exception as e:  # noqa: BLE001 - handed to the caller's thread
            box.append(e)

    t = threading.Thread(target=connect, name="plait-store-probe", daemon=True)
    t.start()
    t.join(timeout_s)
    if not box or isinstance(box[0], Exception):
        why = f" ({type(box[0]).__name__}: {box[0]})" if box else ""
        raise PlaitError(
            f"MASTER_ADDR:MASTER_PORT: no rendezvous answered at {addr}:{port} within "
            f"parallel.timeout_s={timeout_s:g} s{why}; rank 0 did not start, or another "
            "program holds the port: set MASTER_PORT to a free port"
        )


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value on every rank (identity when single process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]

"""``accelerate launch`` with a generated config file, starting plait's entry point.

On CPU the working recipe is ``distributed_type: MULTI_GPU`` + ``use_cpu: true`` +
``ACCELERATE_USE_CPU=true``: accelerate's own ``--cpu``/MULTI_CPU path starts ONE process
(it expects mpirun to fan out), silently."""

from __future__ import annotations

from pathlib import Path

from plait.errors import PlaitError
from plait.launch.command import SIGNALS_ENV, SIGNALS_HANDLED, Entry, Launch

DEFAULT_PORT = 29500


def accelerate_config(
    *, nproc: int, nnodes: int = 1, node_rank: int = 0, main_ip: str = "127.0.0.1",
    main_port: int = DEFAULT_PORT, cpu: bool = True,
) -> str:  # fmt: skip
    """accelerate's YAML; ``num_processes`` counts all machines' processes."""
    if nproc < 1 or nnodes < 1:
        raise PlaitError(f"--nproc {nproc} / --nnodes {nnodes}: both must be >= 1")
    if not 0 <= node_rank < nnodes:
        raise PlaitError(f"--node-rank: {node_rank} is not allowed; must be in [0, {nnodes - 1}]")
    lines = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_processes": nproc * nnodes,
        "num_machines": nnodes,
        "machine_rank": node_rank,
        "main_process_ip": main_ip,
        "main_process_port": main_port,
        "rdzv_backend": "static",
        "same_network": "true",
        "use_cpu": "true" if cpu else "false",
        "mixed_precision": "'no'",
    }
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


def accelerate_launch(
    entry: Entry, python: str, config_path: Path, config_text: str, *, cpu: bool = True
) -> Launch:
    argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(config_path)]
    argv += ["-m", *entry.module_args()]
    env = {"ACCELERATE_USE_CPU": "true"} if cpu else {}
    env[SIGNALS_ENV] = SIGNALS_HANDLED  # accelerate runs torchrun's agent in-process
    return Launch(argv, env, files={Path(config_path): config_text})

"""Rank function for tests/test_context_parallel.py, run through helpers.run_in_ranks: the
training configs, then bench/cp_comm.py's per-layer measurement (collective bytes and saved
activation bytes) in the same launch (start-up dominates on CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from helpers import train_configs

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cp_comm.py"


def cp_comm():
    """bench/cp_comm.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("cp_comm", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def two_rank_suite(cfg_dicts: list[dict]) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from plait import dist as pdist
    from plait.config import from_dict

    cfg = from_dict(cfg_dicts[0])
    env = pdist.DistEnv.from_environ()
    pdist.init_process_group(env, pdist.pick_device("cpu", env.local_rank), cfg.parallel.timeout_s)
    bench = cp_comm()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("cp",))
    wire, saved = bench.per_layer(mesh, batch=2, seq_len=32)
    return {"runs": train_configs(cfg_dicts), "per_layer": (wire, saved)}

"""Checks against this machine, before any rank starts (docs/design.md, "When a rank fails"):
the files a run reads exist, its folders can be written, the device it asks for is here and the
model fits it by ``plait plan``'s estimate. Each refusal is one line; ranks would otherwise fail
seconds later, each with its own traceback. The launcher of ranks on this machine calls
:func:`check_host`; a launcher whose ranks run elsewhere (SLURM, Ray) only :func:`check_files`."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from plait.config import Config
from plait.errors import ConfigError, PlaitError
from plait.plan import Job, Layout, ModelShape, plan_memory
from plait.plan.report import gib
from plait.preflight import default_run_dir


def check_host(cfg: Config, world_size: int, local_ranks: int) -> None:
    """Everything below, for ``local_ranks`` of the job's ``world_size`` ranks on this host."""
    check_files(cfg)
    check_device(cfg, world_size, local_ranks)


def check_files(cfg: Config) -> None:
    """The inputs exist; the run and checkpoint folders are folders this process can write."""
    d = cfg.data
    for key, path in (("data.path", d.path), ("data.eval_path", d.eval_path)):
        if path and not Path(path).exists():
            raise PlaitError(f"{key}: {path!r} does not exist; give an existing file or folder")
    for path in d.mix:
        if not Path(path).exists():
            raise PlaitError(f"data.mix: {path!r} does not exist; give prepared folders")
    init = cfg.checkpoint.init_from
    if init and not Path(init).is_file():
        raise PlaitError(
            f"checkpoint.init_from: {init!r} is not a file; pass a .safetensors file written by "
            "plait export or plait seed"
        )
    _writable_folder("log.run_dir", default_run_dir(cfg))
    if cfg.checkpoint.dir:
        _writable_folder("checkpoint.dir", Path(cfg.checkpoint.dir))


def _writable_folder(key: str, folder: Path) -> None:
    """``folder`` (or, if it does not exist yet, its nearest existing parent) is a folder a file
    can be created in: tried for real, as permissions alone do not tell (root, read-only
    mounts)."""
    here = folder
    while not here.exists() and here != here.parent:
        if here.is_symlink():  # a dangling link: mkdir would fail
            break
        here = here.parent
    if here.exists() and not here.is_dir():
        raise PlaitError(f"{key}: {str(folder)!r} cannot be a folder: {str(here)!r} is a file")
    probe = here / f".plait-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise PlaitError(
            f"{key}: {str(folder)!r} cannot be written ({e.strerror} in {str(here)!r}); "
            "choose a writable folder"
        ) from None


def check_device(cfg: Config, world_size: int, local_ranks: int) -> None:
    """The asked device exists, and the heaviest rank fits it by ``plait plan``'s estimate: on
    CUDA each rank has its GPU's memory, on CPU the ranks of this host share its RAM."""
    kind = cfg.train.device
    cuda = torch.cuda.is_available()
    if kind == "cuda" and not cuda:
        raise ConfigError(
            "train.device: 'cuda' is not allowed here; no CUDA device is visible (use 'cpu' or "
            "'auto')"
        )
    try:
        shape = ModelShape.from_config(cfg)
    except ConfigError:
        return  # a model plait plan does not model (the seed models fit anywhere)
    on_gpu = kind == "cuda" or (kind == "auto" and cuda)
    if on_gpu:
        have = torch.cuda.get_device_properties(0).total_memory
        what, ranks = f"{torch.cuda.get_device_name(0)}'s memory", 1
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        what, ranks = "this host's RAM", local_ranks
    layout = Layout.from_config(cfg, world_size)
    per_rank = plan_memory(shape, layout, Job.from_config(cfg), have).total
    need = per_rank * ranks
    if need > have:
        each = f" ({ranks} ranks x {gib(per_rank)})" if ranks > 1 else " per rank"
        hint = "more GPUs (plait plan CONFIG --gpus N finds a layout that fits)"
        if not on_gpu:
            hint = "GPUs or more hosts (plait plan CONFIG --gpus N tells what fits)"
        raise PlaitError(
            f"model: {cfg.model.name} preset {cfg.model.preset} needs ~{gib(need)}{each} by plait "
            f"plan's estimate, more than {what} ({gib(have)}); use a smaller model.preset or "
            f"{hint}"
        )

"""Checkpoints with torch Distributed Checkpoint (DCP): saved under one layout, loaded under any.

State is keyed by single-process parameter names (``get_model_state_dict`` strips DDP/FSDP/
activation-checkpoint/compile wrappers and speaks DTensor), so DCP can reshard on load to a
different world size, dp/tp/pp split or ZeRO stage, and the optimizer state follows.

A checkpoint folder ``step-00000010/`` holds DCP's files, ``manifest.json`` (step, layout, and a
SHA-256 of every file) and ``rng/rank-R.pt``. Writes are atomic: everything goes to
``.tmp-step-.../`` and is renamed once every rank has finished, and a folder without a valid
manifest is never picked up, so a save interrupted mid-write cannot be resumed from.
Loading never unpickles arbitrary objects (plait.safe_load); export re-checks every SHA-256.
DeepSpeed-engine runs keep the same folders and manifest around DeepSpeed's own files
(plait.ddp.deepspeed_checkpoint); ZeRO-1 / fairscale OSS optimizer state: plait.ddp.optim_state.
The data sampler needs no state: the batch of step k is a pure function of (seed, k); nor does
the lr schedule, rebuilt from the resumed run's config at the loaded step (checkpoints written
before this kept the scheduler's state as ``extra.scheduler``: it is ignored). The optimizer's
state (moments, step counts) comes from the checkpoint, its hyperparameters from the config.
plait.resume decides which config changes a resume accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from plait import failure
from plait.checkpoint_files import (  # noqa: F401 - re-exported
    MANIFEST,
    PREFIX,
    _files,
    _sha256,
    is_complete,
    list_checkpoints,
    newest_valid,
    step_of,
)
from plait.config import from_dict
from plait.ddp import deepspeed_checkpoint
from plait.ddp.optim_state import is_partitioned, load_template, owned_state, set_owned_state
from plait.errors import PlaitError
from plait.expert_parallel import optim_global, optim_local
from plait.models import build_model, param_count
from plait.safe_load import dcp_load, read_safetensors
from plait.wrapped import is_pipeline, state_module


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def app_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any],
    *,
    loading: bool = False,
) -> dict[str, Any]:
    model = state_module(model)
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None and is_partitioned(optimizer):  # ZeRO-1 / fairscale OSS
        state["optim"] = (load_template if loading else owned_state)(model, optimizer)
    elif optimizer is not None:
        state["optim"] = optim_global(model, get_optimizer_state_dict(model, optimizer))
    state["extra"] = extra
    return state


class Checkpointer:
    """Saves every ``every`` steps (and at the end), keeps the newest ``keep``, resumes."""

    def __init__(
        self,
        root: Path,
        *,
        every: int,
        keep: int,
        async_save: bool,
        layout: dict[str, int],
        config: dict,
    ):
        self.root, self.every, self.keep, self.layout, self.config = (
            root,
            every,
            keep,
            layout,
            config,
        )
        self.async_save = async_save
        self._pending: tuple[Any, Path, Path, int] | None = None  # (future, tmp, final, step)
        self._pg = None
        if async_save and dist.is_initialized():
            # a background save runs collectives; give it its own group so it never interleaves
            # with the training step's collectives
            self._pg = dist.new_group(backend="gloo")

    # ---------------------------------------------------------------- save
    def maybe_save(self, step: int, total: int, model, optimizer) -> None:
        if (self.every and step % self.every == 0) or step == total:
            self.save(step, model, optimizer, final=step == total)

    def save(self, step: int, model, optimizer, *, final: bool = False) -> Path:
        self.wait()
        final_dir = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{PREFIX}{step:08d}"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "rng").mkdir(parents=True)
        _barrier()
        with _removed_on_error(tmp):
            extra = {"step": step}
            torch.save(_rng_state(), tmp / "rng" / f"rank-{_rank()}.pt")
            if deepspeed_checkpoint.is_deepspeed(model):  # DeepSpeed's own files (see there)
                deepspeed_checkpoint.save(model, tmp, extra)
                self._commit(tmp, final_dir, step, fmt="deepspeed")
                return final_dir
            state = app_state(model, optimizer, extra)
            if self.async_save and not final:
                fut = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._pg)
                self._pending = (fut, tmp, final_dir, step)
            else:
                dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
                self._commit(tmp, final_dir, step)
        return final_dir

    def wait(self) -> None:
        """Finish a background save (called before the next save and at the end of training)."""
        if self._pending is None:
            return
        fut, tmp, final_dir, step = self._pending
        self._pending = None
        with _removed_on_error(tmp):
            fut.result()
            self._commit(tmp, final_dir, step)

    def _commit(self, tmp: Path, final_dir: Path, step: int, fmt: str = "dcp") -> None:
        _barrier()  # every rank's files are on disk
        if _rank() == 0:
            files = {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)}
            manifest = {"step": step, "format": fmt, "layout": self.layout, "files": files}
            manifest["config"] = self.config
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _set_aside(final_dir)
            os.replace(tmp, final_dir)  # atomic: the checkpoint appears whole or not at all
            # prune only checkpoints older than this one, which is verified by construction; a
            # folder without a readable manifest (unverifiable) or of a later step stays
            older = [p for p in list_checkpoints(self.root) if step_of(p) < step]
            for old in older[: max(0, len(older) - (self.keep - 1))]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    # ---------------------------------------------------------------- load
    def latest(self) -> Path | None:
        """The newest checkpoint whose files match its manifest's checksums. Rank 0 reads them
        and tells the others (one pass over the bytes, not one per rank); a damaged one is
        skipped with a warning, so the one before it is used."""
        box = [None]
        if _rank() == 0:
            found = newest_valid(self.root)
            box = [str(found) if found else None]
        if dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        return Path(box[0]) if box[0] else None


def load(path: Path, model, optimizer) -> int:
    """Load a checkpoint saved under any layout into this layout; returns the step it holds.
    The caller positions the lr schedule at that step (plait.optim.build_scheduler)."""
    if not is_complete(path):
        raise PlaitError(
            f"checkpoint {str(path)!r} is incomplete or not a plait checkpoint (no valid {MANIFEST})"
        )
    manifest = json.loads((path / MANIFEST).read_text())
    _check_format(path, manifest, model)
    # the config's hyperparameters (betas, eps, weight decay, ...), not the saved ones: a
    # resume allowed to change them (plait.resume) runs with the new values
    hyper = [] if optimizer is None else [_hyper(g) for g in optimizer.param_groups]
    if manifest.get("format") == "deepspeed":
        extra = deepspeed_checkpoint.load(model, path)
    else:
        extra = _load_dcp(path, model, optimizer)
    if optimizer is not None:
        for group, h in zip(optimizer.param_groups, hyper):
            group.update(h)
    rng = path / "rng" / f"rank-{_rank()}.pt"
    saved_world = manifest.get("layout", {}).get("world_size")
    world = dist.get_world_size() if dist.is_initialized() else 1
    if rng.is_file() and saved_world == world:  # same layout: continue the very same streams
        try:
            _set_rng_state(torch.load(rng, weights_only=True))
        except Exception as e:  # noqa: BLE001 - refused or damaged: fresh streams, said once
            warnings.warn(f"{str(rng)!r} not restored ({type(e).__name__}): dropout and other "
                          "random draws restart from this rank's seed", stacklevel=2)  # fmt: skip
    return int(extra["step"])


@contextmanager
def _removed_on_error(tmp: Path):
    """A save that fails removes its partial folder (it would keep a full disk full) and says
    why in one line: a full disk or quota, a read-only or forbidden folder will fail the same
    way again, so the launcher ends the job rather than restart it (plait.failure)."""
    try:
        yield
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        shutil.rmtree(tmp, ignore_errors=True)  # every rank tries: whichever is first wins
        if not isinstance(e, Exception) and type(e).__name__ != "CheckpointException":
            raise  # KeyboardInterrupt, SystemExit: the partial folder is gone, nothing to say
        found = [c for c in failure.causes(e) if isinstance(c, OSError)]
        cause = next((c for c in found if c.errno in failure.REPEATING_ERRNOS), None)
        cause = cause or _probe_write(tmp.parent)
        if cause is not None:
            raise PlaitError(
                f"checkpoint save to {str(tmp)!r} failed: {failure.one_line(cause)}; the "
                "partial folder is removed (free space, or set checkpoint.dir elsewhere)"
            ) from e
        raise


def _probe_write(folder: Path) -> OSError | None:
    """Why writing in ``folder`` fails, if it does: torch.save's C++ writer reports a full disk
    as "unexpected pos" with no errno, so one MiB is written and synced here to ask the
    kernel. None: the folder takes it (the save failed for another reason)."""
    probe = folder / f".plait-write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 2**20)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e if e.errno in failure.REPEATING_ERRNOS else None
    finally:
        probe.unlink(missing_ok=True)
    return None


def _set_aside(folder: Path) -> None:
    """A folder already at a new checkpoint's name (a later run restarted from an older step, or
    one whose manifest was lost) is renamed, never deleted: it may hold the only copy."""
    if not folder.exists():
        return
    n = 1
    while (aside := folder.with_name(f"{folder.name}.replaced-{n}")).exists():
        n += 1
    os.replace(folder, aside)
    warnings.warn(f"{str(folder)!r} existed: kept it as {str(aside)!r}", stacklevel=2)


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _load_dcp(path: Path, model, optimizer) -> dict[str, Any]:
    # DCP loads the template's keys only: an older checkpoint's extra.scheduler stays unread
    state = app_state(model, optimizer, {"step": 0}, loading=True)
    dcp_load(state, path, no_dist=not dist.is_initialized())
    model = state_module(model)
    set_model_state_dict(model, state["model"])
    if optimizer is not None and is_partitioned(optimizer):
        set_owned_state(model, optimizer, state["optim"])
    elif optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_local(model, state["optim"]))
    return state["extra"]


def _check_format(path: Path, manifest: dict, model) -> None:
    """DeepSpeed checkpoints resume only under DeepSpeed at the same dp size and ZeRO stage."""
    fmt, ds = manifest.get("format", "dcp"), deepspeed_checkpoint.is_deepspeed(model)
    export = (
        f"; to continue under another layout, run `plait export {path} weights.safetensors` "
        "and start with checkpoint.init_from=weights.safetensors (weights only)"
    )
    if fmt == "deepspeed" and not ds:
        raise PlaitError(
            f"checkpoint {str(path)!r} was written by DeepSpeed and loads only with "
            f"parallel.dp_engine=deepspeed{export}"
        )
    if fmt == "dcp" and ds:
        raise PlaitError(
            f"checkpoint {str(path)!r} is a DCP checkpoint; with parallel.dp_engine=deepspeed "
            f"start from its weights instead{export}"
        )
    if fmt == "deepspeed":
        saved = manifest.get("layout", {})
        world = dist.get_world_size() if dist.is_initialized() else 1
        stage = manifest.get("config", {}).get("parallel", {}).get("zero_stage")
        now = model.zero_optimization_stage()
        if saved.get("world_size") != world or stage != now:
            raise PlaitError(
                f"checkpoint {str(path)!r} was written by DeepSpeed at world size "
                f"{saved.get('world_size')}, zero_stage {stage}; this run has world size {world}, "
                f"zero_stage {now}: use those{export}"
            )


def _rng_state() -> dict[str, Any]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["cpu"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


# ---------------------------------------------------------------- consolidated weights


def export_safetensors(model: nn.Module, out: Path) -> None:
    """Full weights under single-process names into one safetensors file (rank 0 writes)."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if _rank() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()}, str(out))
    _barrier()


def consolidated(path: Path):
    """One process: (config, model holding the full weights on CPU, step) of a checkpoint of
    any layout or engine (DCP, or DeepSpeed's own files)."""
    if not is_complete(path, verify=True):
        raise PlaitError(
            f"{str(path)!r} is not a complete plait checkpoint: no {MANIFEST}, or files that do "
            "not match its SHA-256s"
        )
    manifest = json.loads((path / MANIFEST).read_text())
    cfg = from_dict(manifest["config"])
    model = build_model(cfg)
    model.to_empty(device="cpu")
    if manifest.get("format") == "deepspeed":
        model.load_state_dict(deepspeed_checkpoint.full_weights(path))
    else:
        state = {"model": model.state_dict()}
        dcp_load(state, path, no_dist=True)
        model.load_state_dict(state["model"])
    return cfg, model, int(manifest["step"])


def export_checkpoint(path: Path, out: Path) -> int:
    """One process: a checkpoint of any layout -> one safetensors file of full weights."""
    _, model, step = consolidated(path)
    export_safetensors(model, out)
    return step


def write_seed_checkpoint(cfg, out: Path) -> int:
    """One process, CPU: the model's initial weights (``init_weights(train.seed)``), written once
    so every layout starts from the very same file (torchtitan's seed checkpoint); for models
    whose init is not a pure function of the parameter name, this is what makes layouts agree.
    Returns the parameter count."""
    model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    export_safetensors(model, out)
    return param_count(model)


def load_safetensors(model: nn.Module, path: Path) -> None:
    """Load full weights (a seed checkpoint or an export) into a model of any layout."""
    if not Path(path).is_file():
        raise PlaitError(
            f"checkpoint.init_from: {str(path)!r} does not exist; pass a .safetensors file written by plait export"
        )
    partial = is_pipeline(model)  # a pipeline rank takes only its stages' weights
    model = state_module(model)
    full = read_safetensors(path, "checkpoint.init_from")
    expected = set(get_model_state_dict(model))
    if partial:
        full = {k: v for k, v in full.items() if k in expected}
    missing, unexpected = expected - set(full), set(full) - expected
    if missing or unexpected:
        raise PlaitError(
            f"checkpoint.init_from: {str(path)!r} does not fit this model: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=True))

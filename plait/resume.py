"""What a resumed run may change in its config, compared with the config its checkpoint stored.

A checkpoint continues the run that wrote it, so a key that changes the numbers (model, data,
seed, optimizer kind and hyperparameters, global batch, dtype, clipping) must match, or the run
would silently be another run: such changes are refused, naming the keys, unless
``checkpoint.allow_config_change=true`` says they are meant. The lr schedule's inputs may change
(extending ``train.steps`` is the common case): the schedule is rebuilt from the new config at
the resumed step (plait.optim.build_scheduler), and rank 0 says so. Everything the equivalence
promise covers (parallel layout, accumulation, device, compile), and logging, checkpoint and
evaluation settings, change freely: checkpoints outlive layouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.checkpoint_files import list_checkpoints
from plait.errors import ConfigError

if TYPE_CHECKING:
    from plait.config import Config

SCHEDULE = frozenset(
    {"train.steps", "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.min_lr_ratio"}
)
# the keys (or "section." prefixes) that leave the numbers alone; any other difference counts
FREE = (
    "name",
    "parallel.",
    "log.",
    "checkpoint.",
    "train.grad_accum",
    "train.device",
    "train.compile",
    "train.eval_every",
    "train.eval_batches",
    "train.on_nan",
    "train.max_nan_skips",
)


@dataclass
class ConfigChanges:
    """Keys that differ between a checkpoint's config and this run's, as ``key: (old, new)``."""

    schedule: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    numbers: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _flat(cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (one level: a mapping-valued key such as
    model.hf_overrides is compared whole)."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> ConfigChanges:
    """Compare two ``Config.to_dict()`` dicts. A key only one side has (an option added or
    removed between plait versions) is not a change: the older run used its default."""
    a, b = _flat(old), _flat(new)
    out = ConfigChanges()
    for key in sorted(a.keys() & b.keys()):
        if a[key] == b[key] or any(key == f or (f[-1] == "." and key.startswith(f)) for f in FREE):
            continue
        (out.schedule if key in SCHEDULE else out.numbers)[key] = (a[key], b[key])
    return out


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
    """``train.seed 0 -> 1, optim.name 'adamw' -> 'sgd'``"""
    return ", ".join(f"{k} {_show(o)} -> {_show(n)}" for k, (o, n) in diff.items())


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else json.dumps(v)


def check(checkpoint: Path, old: dict[str, Any], new: dict[str, Any]) -> ConfigChanges:
    """The changes of resuming ``checkpoint`` (whose stored config is ``old``) under ``new``;
    raises :class:`ConfigError` on a change to the numbers unless the new config allows it."""
    changes = config_changes(old, new)
    allowed = new.get("checkpoint", {}).get("allow_config_change", False)
    if changes.numbers and not allowed:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} was written with another config, and resuming it "
            f"would change the numbers: {describe(changes.numbers)}; use the checkpoint's "
            "values, pass checkpoint.allow_config_change=true to continue with the new ones, or "
            "start a fresh run folder (log.run_dir / checkpoint.dir; its weights alone: "
            "plait export, then checkpoint.init_from)"
        )
    return changes


def check_before_launch(cfg: Config) -> None:
    """:func:`check` before any rank starts (plait train --nproc), against the newest checkpoint
    its manifest names; the ranks verify the checksums and compare again."""
    c = cfg.checkpoint
    if c.resume != "auto" or not (c.every or c.dir) or not (c.dir or cfg.log.run_dir):
        return
    found = list_checkpoints(Path(c.dir) if c.dir else Path(cfg.log.run_dir) / "checkpoints")
    old = stored_config(found[-1]) if found else None
    if old is not None:
        check(found[-1], old, cfg.to_dict())


def stored_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config a checkpoint's manifest stored (None for a manifest without one)."""
    try:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = manifest.get("config") if isinstance(manifest, dict) else None
    return cfg if isinstance(cfg, dict) else None

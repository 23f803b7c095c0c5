"""A checkpoint folder as files: its name, its manifest and their SHA-256s. Torch-free, so
``plait train --nproc`` and the resume check read checkpoints before any rank starts
(plait.checkpoint saves and loads them)."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

PREFIX = "step-"
MANIFEST = "manifest.json"
_NAME = re.compile(rf"{PREFIX}(\d+)")


def step_of(folder: Path) -> int | None:
    """The step a ``step-<digits>`` folder holds; None for any other name (``step-16.bak``, a
    copy left by hand), which is never resumed, pruned nor overwritten."""
    m = _NAME.fullmatch(folder.name)
    return int(m.group(1)) if m else None


def _named(root: Path) -> list[Path]:
    """``step-<digits>`` folders under ``root``, oldest first; other ``step-*`` names are left
    alone with a one-line warning."""
    found = []
    for p in root.iterdir():
        if not (p.is_dir() and p.name.startswith(PREFIX)):
            continue
        if step_of(p) is None:
            warnings.warn(
                f"{str(p)!r} is not a checkpoint name (step-<digits>): ignoring it", stacklevel=3
            )
            continue
        found.append(p)
    return sorted(found, key=step_of)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def is_complete(folder: Path, verify: bool = False) -> bool:
    """A folder is a checkpoint only with a manifest; ``verify`` also re-checks every checksum."""
    m = folder / MANIFEST
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):  # `[]`, `null` or a manifest without its file list
        return False
    for rel, digest in files.items():
        p = folder / rel
        if not p.is_file() or (verify and _sha256(p) != digest):
            return False
    return True


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return [p for p in _named(root) if is_complete(p)]


def newest_valid(root: Path) -> Path | None:
    """Newest ``step-*`` folder under ``root`` that passes :func:`is_complete` with checksums."""
    if not root.is_dir():
        return None
    for p in reversed(_named(root)):
        if is_complete(p, verify=True):
            return p
        warnings.warn(
            f"checkpoint {str(p)!r} does not match its {MANIFEST} (missing, truncated or corrupted "
            "files): skipping it and resuming from the previous one",
            stacklevel=2,
        )
    return None

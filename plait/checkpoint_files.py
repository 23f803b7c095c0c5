"""A checkpoint folder as files: its name, its manifest and their SHA-256s. Torch-free, so
``plait train --nproc`` and the resume check read checkpoints before any rank starts
(plait.checkpoint saves and loads them)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

PREFIX = "step-"
MANIFEST = "manifest.json"


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
    except ValueError:
        return False
    files = manifest.get("files", {})
    for rel, digest in files.items():
        p = folder / rel
        if not p.is_file() or (verify and _sha256(p) != digest):
            return False
    return True


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and is_complete(p)
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def newest_valid(root: Path) -> Path | None:
    """Newest ``step-*`` folder under ``root`` that passes :func:`is_complete` with checksums."""
    if not root.is_dir():
        return None
    named = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    for p in sorted(named, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True):
        if is_complete(p, verify=True):
            return p
        warnings.warn(
            f"checkpoint {str(p)!r} does not match its {MANIFEST} (missing, truncated or corrupted "
            "files): skipping it and resuming from the previous one",
            stacklevel=2,
        )
    return None

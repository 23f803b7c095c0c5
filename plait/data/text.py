"""Byte-level language modelling on a real corpus every Python install ships: its stdlib sources."""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from plait.config import Config
from plait.data.base import Batch, StepData, generator
from plait.errors import PlaitError
from plait.registry import register_data

MAX_BYTES = 4 * 2**20  # enough text for CPU runs; reading more only slows start-up


def read_corpus(root: str | Path | None = None, max_bytes: int = MAX_BYTES) -> bytes:
    """A text file's bytes, or the ``.py``/``.txt`` files under a folder (default: the stdlib)
    concatenated in sorted path order; at most ``max_bytes`` (see :func:`corpus_size`)."""
    return _read(root, max_bytes)[0]


def _read(root: str | Path | None, max_bytes: int) -> tuple[bytes, int]:
    """(the first max_bytes bytes, the corpus's full size when it was cut, else 0). The stdlib's
    corpus is fixed per Python install, so it is walked once and then read from a cache file
    (walking and reading thousands of files took every rank ~0.7 s at start-up)."""
    if root:
        return _walk(Path(root), max_bytes)
    stdlib = sysconfig.get_paths()["stdlib"]
    # v2: the file starts with the full size (8 bytes); a version bump keeps old caches unread
    key = hashlib.sha256(f"v2|{stdlib}|{sys.version}|{max_bytes}".encode()).hexdigest()[:16]
    cache = _cache_dir() / f"stdlib-corpus-{key}.bin"
    if cache.is_file():
        blob = cache.read_bytes()
        return blob[8:], int.from_bytes(blob[:8], "little")
    data, full = _walk(Path(stdlib), max_bytes)
    try:  # atomic: ranks starting together each write whole files, one wins
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name)
        with os.fdopen(fd, "wb") as f:
            f.write(full.to_bytes(8, "little") + data)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: walk again next time
    return data, full


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plait"


def _walk(base: Path, max_bytes: int) -> tuple[bytes, int]:
    if base.is_file():
        with open(base, "rb") as f:
            data = f.read(max_bytes + 1)
        return data[:max_bytes], (base.stat().st_size if len(data) > max_bytes else 0)
    if not base.is_dir():
        raise PlaitError(
            f"data.path: {str(base)!r} does not exist; point it at a text file or a folder of .py/.txt files, or leave it unset for the stdlib"
        )
    files = sorted(
        p
        for p in base.rglob("*")
        if p.suffix in (".py", ".txt") and p.is_file() and "site-packages" not in p.parts
    )
    chunks, total = [], 0
    for f in files:
        try:
            b = f.read_bytes()
        except OSError:
            continue
        chunks.append(b)
        total += len(b)
        if total > max_bytes:
            break
    if total <= max_bytes:
        return b"".join(chunks), 0
    full = total + sum(f.stat().st_size for f in files[len(chunks) :])
    return b"".join(chunks)[:max_bytes], full


class ByteText(StepData):
    """Random windows of seq_len+1 bytes; the last eval_fraction of the corpus is held out."""

    task = "lm"

    def __init__(
        self,
        seed: int,
        seq_len: int,
        eval_fraction: float,
        root: str | None = None,
        max_bytes: int = MAX_BYTES,
    ):
        super().__init__(seed)
        raw, full = _read(root, max_bytes)
        self.cut_from = full
        if full and os.environ.get("RANK", "0") == "0":  # never cut silently
            print(
                f"data: using the first {len(raw):,} of {full:,} bytes of {root or 'the stdlib'} "
                "(data.max_bytes); raise it to read more, or prepare a token folder",
                flush=True,
            )
        if len(raw) < 4 * (seq_len + 1):
            where = root or "the stdlib"
            raise PlaitError(
                f"data.path: the corpus in {where!r} has {len(raw)} bytes, too few for data.seq_len={seq_len}; use a folder with more text or a smaller seq_len"
            )
        corpus = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        cut = int(len(corpus) * (1 - eval_fraction))
        if eval_fraction > 0 and len(corpus) - cut < seq_len + 1:
            cut = len(corpus) - (seq_len + 1)
        self.parts = {"train": corpus[:cut]}
        if eval_fraction > 0:
            self.parts["eval"] = corpus[cut:]
        self.splits = tuple(self.parts)
        self.seq_len = seq_len
        self.vocab_size = 256

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        text = self.parts[split]
        T = self.seq_len
        g = generator(self.seed, f"text-{split}-{step}")
        offsets = torch.randint(0, len(text) - T - 1 + 1, (global_batch,), generator=g)[lo:hi]
        win = torch.stack([text[o : o + T + 1] for o in offsets.tolist()])  # (b, T+1)
        return {"input": win[:, :-1], "target": win[:, 1:]}

    def describe(self) -> str:
        cut = f", cut from {self.cut_from} by data.max_bytes" if self.cut_from else ""
        return f"ByteText({sum(len(p) for p in self.parts.values())} bytes{cut})"


@register_data("stdlib_text", tasks=("lm",), vocab_size=256)  # bytes
def build_text(cfg: Config, model) -> ByteText:
    d = cfg.data
    return ByteText(cfg.train.seed, d.seq_len, d.eval_fraction, d.path, d.max_bytes)

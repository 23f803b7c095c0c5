"""``data.name: tokens``: token files read in place by (split, step, slice).

Nothing is loaded: each sequence is one positioned read (``os.pread``) of seq_len+1 tokens.
Reads, not a memory map: pages a map touches stay in the process's resident set until the
kernel reclaims them (with readahead, gigabytes over a long random walk), and a positioned read
leaves none behind, so the loader's memory stays flat however long the run.

A source is a prepared folder (``plait data prepare``: shards + meta.json) or a flat ``.bin``
token file written by another tool (nanoGPT, Megatron: ``data.dtype`` names its dtype). Its
shards form one packed stream; sequence i is tokens [i*T, i*T + T + 1) (T = seq_len). Training
position p = step * global_batch + j reads sequence ``perm_e[p mod n]`` of epoch e = p div n,
where perm_e is a lazy seeded bijection (:mod:`plait.data.permute`): the global batch of step
k is a pure function of (seed, k) and no O(tokens) state is ever held.

A mixture (``data.mix: {folder: weight}``) assigns positions to sources by a deterministic
weighted interleave (a binary split per source, as in Bresenham's line), so source s holds
within one position of weight_s * p of the first p positions, and each source walks its own
epochs. Evaluation reads, in order, ``data.eval_path`` or the last documents of the training
stream (``data.eval_fraction`` of its tokens, cut at a document boundary).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from plait.config import Config
from plait.data.base import Batch, StepData
from plait.data.permute import Permutation, derive_key
from plait.data.prepare import DOC_ENDS, FORMAT, META
from plait.data.tokenizer import file_sha256
from plait.errors import PlaitError
from plait.registry import register_data

DTYPES = ("uint16", "uint32", "int32", "int64")


class TokenStream:
    """One source: shards read in place as a single stream of ``len(self)`` tokens."""

    def __init__(self, path: str | Path, dtype: str | None = None, verify: bool = True):
        p = Path(path)
        self.path, self.meta = p, None
        if dtype is not None and dtype not in DTYPES:
            raise PlaitError(
                f"data.dtype: {dtype!r} is not allowed; expected one of {', '.join(DTYPES)}"
            )
        if p.is_dir() and (p / META).is_file():
            self.meta = read_meta(p)
            files = [(p / s["file"], s) for s in self.meta["shards"]]
            self.dtype = np.dtype(self.meta["dtype"])
            if dtype and np.dtype(dtype) != self.dtype:
                raise PlaitError(
                    f"data.dtype: {dtype!r} contradicts {str(p / META)!r} ({self.dtype.name})"
                )
        else:
            if p.is_dir():
                found = sorted(p.glob("*.bin"))
                if not found:
                    raise PlaitError(
                        f"data.path: {str(p)!r} has no {META} and no .bin files; prepare it with: plait data prepare"
                    )
            elif p.is_file():
                found = [p]
            else:
                raise PlaitError(
                    f"data.path: {str(p)!r} does not exist; give a prepared folder or a .bin token file"
                )
            dtype = dtype or megatron_dtype(found[0])
            if dtype is None:
                raise PlaitError(
                    f"data.dtype: {str(p)!r} is a raw token file; say its dtype ({', '.join(DTYPES)})"
                )
            self.dtype, files = np.dtype(dtype), [(f, None) for f in found]
        self.shards = []
        for f, rec in files:
            if not f.is_file():
                raise PlaitError(f"data.path: shard {str(f)!r} listed in {META} is missing")
            size = f.stat().st_size
            if size % self.dtype.itemsize:
                raise PlaitError(
                    f"data.path: {str(f)!r} is truncated: {size} bytes is not a multiple of "
                    f"{self.dtype.itemsize} ({self.dtype.name})"
                )
            n = size // self.dtype.itemsize
            if rec is not None and (
                n != rec["tokens"] or (verify and file_sha256(f) != rec["sha256"])
            ):
                raise PlaitError(
                    f"data.path: {str(f)!r} does not match {META} ({'token count' if n != rec['tokens'] else 'SHA-256'}); "
                    "prepare the folder again (or set data.verify=false to skip checksums)"
                )
            if n:
                self.shards.append((os.open(f, os.O_RDONLY), n))
        self.offsets = np.cumsum([0] + [n for _, n in self.shards])
        self.vocab_size = self.meta["vocab_size"] if self.meta else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of the stream, across shard boundaries."""
        i = int(np.searchsorted(self.offsets, a, side="right")) - 1
        parts, size = [], self.dtype.itemsize
        while a < b:
            fd, n = self.shards[i]
            lo = a - int(self.offsets[i])
            take = min(b - a, n - lo)
            parts.append(np.frombuffer(os.pread(fd, take * size, lo * size), dtype=self.dtype))
            a, i = a + take, i + 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def doc_ends(self) -> np.ndarray | None:
        f = self.path / DOC_ENDS
        if self.meta is None or not f.is_file() or f.stat().st_size == 0:
            return None
        return np.memmap(f, dtype=np.uint64, mode="r")


MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_DTYPES = {4: "int32", 5: "int64", 8: "uint16"}  # the token dtypes of its .idx codes


def megatron_dtype(bin_file: Path) -> str | None:
    """The token dtype a Megatron ``.idx`` next to ``bin_file`` records, else None."""
    idx = bin_file.with_suffix(".idx")
    if not idx.is_file():
        return None
    with open(idx, "rb") as f:
        head = f.read(len(MEGATRON_MAGIC) + 9)
    if not head.startswith(MEGATRON_MAGIC) or len(head) < len(MEGATRON_MAGIC) + 9:
        return None
    code = head[len(MEGATRON_MAGIC) + 8]
    if code not in MEGATRON_DTYPES:
        raise PlaitError(f"data.path: {str(idx)!r} records dtype code {code}, not a token dtype")
    return MEGATRON_DTYPES[code]


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PlaitError(f"data.path: {str(folder / META)!r} is unreadable: {e}") from None
    if meta.get("format") != FORMAT:
        raise PlaitError(f"data.path: {str(folder / META)!r} is not a {FORMAT} folder")
    return meta


def data_vocab_size(d) -> int | None:
    """The largest vocabulary among the configured sources' metadata (None: raw .bin only)."""
    sizes = []
    for p in [*_source_paths(d), *([d.eval_path] if d.eval_path else [])]:
        if Path(p).is_dir() and (Path(p) / META).is_file():
            sizes.append(read_meta(Path(p))["vocab_size"])
    return max(sizes) if sizes else None


AUTO_VOCAB_MULTIPLE = 64


def auto_vocab_size(d) -> int:
    """``model.vocab_size: auto``: the vocabulary recorded in the data's meta.json, padded up to
    a multiple of 64 (as Megatron pads it: tensor parallel splits the vocabulary evenly, and
    such sizes suit matmul kernels; the extra ids are never drawn)."""
    v = data_vocab_size(d) if d.name == "tokens" else None
    if v is None:
        raise PlaitError(
            "model.vocab_size: auto needs data.name=tokens on a prepared folder (with meta.json); "
            "raw .bin files carry no vocabulary, so give the number"
        )
    return -(-v // AUTO_VOCAB_MULTIPLE) * AUTO_VOCAB_MULTIPLE


def check_vocab(model_vocab: int, d, key: str = "model.vocab_size") -> None:
    """Refuse a model whose embedding is smaller than the data's vocabulary (ids would be out
    of range mid-run)."""
    v = data_vocab_size(d)
    if v is not None and model_vocab < v:
        raise PlaitError(
            f"{key}: {model_vocab} is smaller than the data's vocabulary {v} "
            f"({', '.join(_source_paths(d))}); set {key}={v}"
            + (" or auto" if key == "model.vocab_size" else "")
        )


def _source_paths(d) -> list[str]:
    if d.mix:
        return list(d.mix)
    if not d.path:
        raise PlaitError(
            "data.path: data.name=tokens needs a prepared folder or .bin file (or data.mix)"
        )
    return [d.path]


class _Source:
    """The training sequences of one stream, in seeded epochs."""

    def __init__(self, stream: TokenStream, stop: int, seq_len: int, seed: int, tag: str):
        self.stream, self.T, self.seed, self.tag = stream, seq_len, seed, tag
        self.n = (stop - 1) // seq_len
        if self.n < 1:
            raise PlaitError(
                f"data.path: {str(stream.path)!r} has {stop} training tokens, too few for data.seq_len={seq_len}"
            )
        self._perms: dict[int, Permutation] = {}

    def perm(self, epoch: int) -> Permutation:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = Permutation(self.n, derive_key(self.seed, f"{self.tag}-{epoch}"))
        return self._perms[epoch]

    def sequences(self, idx: np.ndarray) -> list[np.ndarray]:
        epoch, within = np.divmod(idx, self.n)
        seq = np.empty_like(idx)
        for e in np.unique(epoch).tolist():
            at = epoch == e
            seq[at] = self.perm(e)[within[at]]
        return [self.stream.read(s * self.T, s * self.T + self.T + 1) for s in seq.tolist()]


def interleave(p: np.ndarray, weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(source, index within that source) of global positions ``p``: source 0 takes position p
    when round(w0 * (p+1)) > round(w0 * p); the rest split the others the same way, recursively."""
    src = np.full(p.shape, len(weights) - 1, dtype=np.int64)
    idx = p.astype(np.int64).copy()
    open_ = np.ones(p.shape, dtype=bool)
    left = 1.0
    for s, w in enumerate(weights[:-1]):
        f = w / left
        before = np.floor(idx * f + 0.5).astype(np.int64)
        mine = open_ & (np.floor((idx + 1) * f + 0.5).astype(np.int64) > before)
        src[mine] = s
        rest = open_ & ~mine
        idx = np.where(mine, before, np.where(rest, idx - before, idx))
        open_ = rest
        left -= w
    return src, idx


class TokenData(StepData):
    """The configured sources (one, or a weighted mixture) and their held-out evaluation."""

    task = "lm"

    def __init__(self, seed: int, d):
        super().__init__(seed)
        self.T = d.seq_len
        paths = _source_paths(d)
        weights = [float(d.mix[p]) for p in paths] if d.mix else [1.0]
        if any(w <= 0 for w in weights):
            raise PlaitError(f"data.mix: weights must be > 0, got {d.mix}")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        streams = [TokenStream(p, d.dtype, d.verify) for p in paths]
        self.sources, evals = [], []
        for i, s in enumerate(streams):
            stop = len(s)
            if not d.eval_path and d.eval_fraction > 0:
                stop = _eval_cut(s, d.eval_fraction, self.T)
                evals.append((s, stop, len(s)))
            self.sources.append(_Source(s, stop, self.T, seed, f"tokens-{i}"))
        if d.eval_path:
            e = TokenStream(d.eval_path, d.dtype, d.verify)
            evals = [(e, 0, len(e))]
        self.evals = [
            (s, a, (b - a - 1) // self.T) for s, a, b in evals if (b - a - 1) // self.T > 0
        ]
        self.splits = ("train", "eval") if self.evals else ("train",)
        self.vocab_size = max([s.vocab_size or 0 for s in streams]) or None

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        p = step * global_batch + np.arange(lo, hi, dtype=np.int64)
        if split == "train":
            src, idx = interleave(p, self.weights)
            seqs: list[np.ndarray | None] = [None] * len(p)
            for s, source in enumerate(self.sources):
                where = np.nonzero(src == s)[0]
                for j, seq in zip(where.tolist(), source.sequences(idx[where])):
                    seqs[j] = seq
        else:
            seqs = [self._eval_seq(int(i)) for i in p]
        win = torch.from_numpy(np.stack(seqs).astype(np.int64))
        return {"input": win[:, :-1], "target": win[:, 1:]}

    def _eval_seq(self, i: int) -> np.ndarray:
        i %= sum(n for _, _, n in self.evals)
        for s, a, n in self.evals:
            if i < n:
                return s.read(a + i * self.T, a + i * self.T + self.T + 1)
            i -= n
        raise AssertionError("unreachable")

    def eval_steps(self, global_batch: int, default: int) -> int:
        return default if self.evals else 0

    def describe(self) -> str:
        parts = [f"{s.stream.path}:{len(s.stream)}x{s.stream.dtype.name}" for s in self.sources]
        w = "" if len(parts) == 1 else f" weights {[round(x, 4) for x in self.weights]}"
        return f"TokenData({', '.join(parts)}{w})"


def _eval_cut(s: TokenStream, fraction: float, T: int) -> int:
    """Training stops here: the last documents holding ``fraction`` of the tokens (at least one
    sequence) are held out; without document boundaries (raw .bin) the cut is at a token."""
    want = len(s) - max(math.ceil(len(s) * fraction), T + 1)
    ends = s.doc_ends()
    if ends is not None and len(ends) > 1:
        k = int(np.searchsorted(ends, want, side="right"))
        cut = int(ends[k - 1]) if k > 0 else 0
        if cut >= T + 1 and len(s) - cut >= T + 1:
            return cut
    return max(want, 0)


@register_data("tokens", tasks=("lm",), vocab_of=lambda cfg: data_vocab_size(cfg.data))
def build_tokens(cfg: Config, model) -> TokenData:
    """Prepared token folders and raw .bin files (``plait data prepare``)."""
    return TokenData(cfg.train.seed, cfg.data)

"""``plait data prepare``: documents -> sharded flat token files + ``meta.json``.

Inputs are split into work units (a text file, a newline-aligned byte range of a JSON Lines
file, a Parquet row group, an Arrow file of a ``datasets`` ``save_to_disk`` folder) in a fixed order that depends only on the inputs; workers tokenize
units and the results are written in unit order, so the output is byte-identical for any
number of workers. Each document is followed by the tokenizer's end-of-document id.

Invalid UTF-8 is replaced by U+FFFD (never fatal); the documents and characters affected are
counted in ``meta.json`` and printed. The folder is written under a temporary name and renamed
into place; a second run whose inputs (path, size, mtime), tokenizer and options are unchanged
does no work.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plait.data.tokenizer import Tokenizer, file_sha256, load_tokenizer
from plait.errors import PlaitError

FORMAT = "plait-tokens-v1"
META = "meta.json"
DOC_ENDS = "doc_ends.bin"  # uint64: stream offset just past each document's EOD
JSONL_CHUNK = 8 << 20
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class Unit:
    path: str
    kind: str  # text | jsonl | parquet
    start: int = 0  # jsonl: byte range; parquet: row group
    stop: int = 0


def expand_inputs(specs: list[str], skipped: list[Path] | None = None) -> list[Path]:
    """Files, folders (every file below, sorted) and globs, in the order given; duplicates
    dropped. A spec that matches nothing is an error; empty files a folder or glob finds
    (``__init__.py``) are left out and appended to ``skipped``, a named empty file is an error."""
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir() and (p / "state.json").is_file():  # a datasets save_to_disk folder
            found = _saved_dataset_files(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            found = [p]
        else:
            found = [Path(f) for f in sorted(glob.glob(s, recursive=True)) if Path(f).is_file()]
        if not found:
            raise PlaitError(f"prepare: {s!r} matches no file; give files, folders or globs")
        if found != [p]:
            empty = [f for f in found if f.stat().st_size == 0]
            found = [f for f in found if f.stat().st_size > 0]
            if skipped is not None:
                skipped += empty
        out += found
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def _saved_dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``datasets`` ``save_to_disk`` folder, in the dataset's row order."""
    try:
        files = [
            folder / f["filename"]
            for f in json.loads((folder / "state.json").read_text())["_data_files"]
        ]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise PlaitError(
            f"prepare: {str(folder / 'state.json')!r} is not a datasets state file ({e})"
        ) from None
    return files


def _kind(path: Path) -> str:
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix == ".arrow":
        return "arrow"
    return "parquet" if path.suffix == ".parquet" else "text"


def plan_units(files: list[Path], column: str) -> list[Unit]:
    units = []
    for f in files:
        size = f.stat().st_size
        if size == 0:
            raise PlaitError(f"prepare: {str(f)!r} is an empty file; remove it or give content")
        kind = _kind(f)
        if kind == "text":
            units.append(Unit(str(f), kind))
        elif kind == "arrow":
            _arrow_table(f, column)  # the column is checked here, before any worker starts
            units.append(Unit(str(f), kind))
        elif kind == "jsonl":
            units += [Unit(str(f), kind, a, b) for a, b in _line_ranges(f, size)]
        else:
            units += [Unit(str(f), kind, g) for g in range(_parquet_groups(f, column))]
    return units


def _line_ranges(path: Path, size: int) -> list[tuple[int, int]]:
    """[start, stop) byte ranges of about JSONL_CHUNK bytes, each ending just after a newline."""
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + JSONL_CHUNK, size))
            f.readline()
            stop = min(f.tell(), size) if start + JSONL_CHUNK < size else size
            ranges.append((start, stop))
            start = stop
    return ranges


def _pyarrow(path: Path):
    """pyarrow (with its parquet module), or one line saying how to get it."""
    try:
        # deferred: pyarrow is an optional extra (data)
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 - makes pa.parquet available
    except ImportError:
        raise PlaitError(
            f"prepare: {str(path)!r} needs pyarrow; pip install 'plait[data]'"
        ) from None
    return pa


def _parquet_groups(path: Path, column: str) -> int:
    pa = _pyarrow(path)
    try:
        f = pa.parquet.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise PlaitError(f"prepare: {str(path)!r} is not a readable Parquet file: {e}") from None
    names = f.schema_arrow.names
    if column not in names:
        raise PlaitError(
            f"prepare: {str(path)!r} has no column {column!r}; columns: {', '.join(names)} "
            "(choose with --column)"
        )
    tp = f.schema_arrow.field(column).type
    if not (pa.types.is_string(tp) or pa.types.is_large_string(tp)):
        raise PlaitError(f"prepare: {str(path)!r} column {column!r} is {tp}, not text")
    return f.num_row_groups


def _arrow_table(path: Path, column: str):
    """One column of a ``datasets`` Arrow file (the IPC stream format), read in place."""
    pa = _pyarrow(path)
    try:
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_stream(src)
            names = reader.schema.names
            if column not in names:
                raise PlaitError(
                    f"prepare: {str(path)!r} has no column {column!r}; columns: {', '.join(names)} "
                    "(choose with --column)"
                )
            return reader.read_all().column(column)
    except pa.ArrowInvalid as e:
        raise PlaitError(f"prepare: {str(path)!r} is not a readable Arrow file: {e}") from None


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text and how many replacement characters invalid bytes became."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def read_docs(u: Unit, field: str, column: str) -> tuple[list[str], int, int]:
    """(documents, documents with invalid UTF-8, replaced characters) of one unit."""
    if u.kind == "text":
        text, bad = _decode(Path(u.path).read_bytes())
        return [text], int(bad > 0), bad
    if u.kind == "arrow":
        docs = _arrow_table(Path(u.path), column).to_pylist()
        if not all(isinstance(d, str) for d in docs):
            raise PlaitError(f"prepare: {u.path!r} column {column!r} holds non-text rows")
        return docs, 0, 0
    if u.kind == "parquet":
        # deferred: pyarrow is an optional extra (data)
        import pyarrow.parquet as pq

        col = pq.ParquetFile(u.path).read_row_group(u.start, columns=[column]).column(0)
        docs = col.to_pylist()
        if any(d is None for d in docs):
            raise PlaitError(f"prepare: {u.path!r} column {column!r} has null rows")
        return docs, 0, 0
    with open(u.path, "rb") as f:
        f.seek(u.start)
        lines = f.read(u.stop - u.start).split(b"\n")
    docs, bad_docs, bad_chars = [], 0, 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        line, bad = _decode(raw)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlaitError(f"{u.path}:{_lineno(u, i)}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise PlaitError(
                f"{u.path}:{_lineno(u, i)}: no text field {field!r} (choose with --field)"
            )
        docs.append(obj[field])
        bad_docs, bad_chars = bad_docs + (bad > 0), bad_chars + bad
    return docs, bad_docs, bad_chars


def _lineno(u: Unit, i: int) -> int:
    with open(u.path, "rb") as f:
        return f.read(u.start).count(b"\n") + i + 1


_TOK: Tokenizer | None = None


def _init_worker(spec: str, eod: str | None) -> None:
    global _TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per worker is the parallelism
    _TOK = load_tokenizer(spec, eod)


def tokenize_unit(args: tuple[Unit, str, str]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(tokens with an EOD after each document, per-document lengths, bad docs, bad chars)."""
    u, field, column = args
    docs, bad_docs, bad_chars = read_docs(u, field, column)
    ids = _TOK.encode_batch(docs)
    lens = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    flat = np.full(int(lens.sum()), _TOK.eod_id, dtype=np.int64)  # the EODs stay in place
    pos = 0
    for x, n in zip(ids, lens.tolist()):
        flat[pos : pos + n - 1] = x
        pos += n
    return flat, lens, bad_docs, bad_chars


def _fingerprint(files: list[Path], tok: Tokenizer, opts: dict) -> str:
    st = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([st, tok.kind, tok.sha256, opts], sort_keys=True)  # not its path
    return hashlib.sha256(blob.encode()).hexdigest()


class _ShardWriter:
    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.cap = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self.f = None

    def _open(self) -> None:
        name = f"tokens-{len(self.shards):05d}.bin"
        self.f, self.n, self.h = open(self.folder / name, "wb"), 0, hashlib.sha256()
        self.shards.append({"file": name})

    def write(self, arr: np.ndarray) -> None:
        while len(arr):
            if self.f is None or self.n == self.cap:
                self._close()
                self._open()
            part, arr = arr[: self.cap - self.n], arr[self.cap - self.n :]
            b = part.astype(self.dtype).tobytes()
            self.f.write(b)
            self.h.update(b)
            self.n += len(part)

    def _close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.shards[-1].update(tokens=self.n, sha256=self.h.hexdigest())
            self.f = None

    def close(self) -> list[dict]:
        self._close()
        return self.shards


def prepare(
    inputs: list[str],
    out: str | Path,
    tokenizer: str = "bytes",
    *,
    field: str = "text",
    column: str = "text",
    workers: int = 1,
    shard_tokens: int = 1 << 28,
    eod: str | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize ``inputs`` into the folder ``out``; returns its metadata (also in meta.json)."""
    out = Path(out)
    tok = load_tokenizer(tokenizer, eod)
    skipped: list[Path] = []
    files = expand_inputs(inputs, skipped)
    opts = {"field": field, "column": column, "shard_tokens": shard_tokens, "eod": tok.eod_id}
    fp = _fingerprint(files, tok, opts)
    if (out / META).is_file():
        old = json.loads((out / META).read_text())
        if old.get("fingerprint") == fp:
            old["up_to_date"] = True
            return old
    units = plan_units(files, column)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _write(units, tok, tokenizer, eod, field, column, workers, tmp, dtype, shard_tokens, progress)  # fmt: skip
        meta.update(fingerprint=fp, inputs=[str(f) for f in files], skipped_empty=len(skipped))
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write(units, tok, spec, eod, field, column, workers, folder, dtype, shard_tokens, progress):
    # deferred: the progress bar only when preparing
    from tqdm import tqdm

    writer = _ShardWriter(folder, dtype, shard_tokens)
    docs = tokens = bad_docs = bad_chars = 0
    jobs = [(u, field, column) for u in units]
    bar = tqdm(total=len(units), unit="unit", desc="prepare", disable=not progress)
    with open(folder / DOC_ENDS, "wb") as ends:
        if workers > 1:
            # deferred: worker processes only when asked for
            import multiprocessing as mp

            # fork: workers start in milliseconds (spawn re-imports torch in each)
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(workers, _init_worker, (spec, eod))
            results = pool.imap(tokenize_unit, jobs)  # imap keeps unit order
        else:
            pool = None
            _init_worker(spec, eod)
            results = map(tokenize_unit, jobs)
        try:
            for flat, lens, bd, bc in results:
                writer.write(flat)
                ends.write((tokens + np.cumsum(lens)).astype(np.uint64).tobytes())
                docs, tokens = docs + len(lens), tokens + len(flat)
                bad_docs, bad_chars = bad_docs + bd, bad_chars + bc
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
            bar.close()
    return {
        "format": FORMAT,
        "tokenizer": {**tok.identity(), "vocab_size": tok.vocab_size},
        "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id,
        "dtype": dtype.name,
        "documents": docs,
        "tokens": tokens,
        "invalid_utf8": {"documents": bad_docs, "replaced_chars": bad_chars},
        "shards": writer.close(),
        "doc_ends_sha256": _sha(folder / DOC_ENDS),
    }


def _sha(path: Path) -> str:
    return file_sha256(path)

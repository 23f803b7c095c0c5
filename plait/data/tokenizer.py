"""Tokenizers from local files only (nothing is downloaded): Hugging Face ``tokenizers`` from a
``tokenizer.json`` or a ``save_pretrained`` folder, tiktoken encodings from a ``.tiktoken``
file, and plait's byte level (``bytes``: 256 byte ids plus an end-of-document id 256).

Every tokenizer has an identity (kind + SHA-256 of its file) that prepared token folders record,
so a folder is never read with a model trained for another vocabulary by accident.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from plait.errors import PlaitError

TIKTOKEN_NAMES = ("gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base")
EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[SEP]")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


class Tokenizer:
    """``encode_batch`` maps documents to token ids; ``eod_id`` separates documents."""

    kind: str = ""
    name: str = ""
    sha256: str = ""
    vocab_size: int = 0
    eod_id: int = 0

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        raise NotImplementedError  # abstract: the three kinds below implement it

    def identity(self) -> dict:
        return {"kind": self.kind, "name": self.name, "sha256": self.sha256}


class ByteTokenizer(Tokenizer):
    kind, name, vocab_size, eod_id = "bytes", "bytes", 257, 256
    sha256 = hashlib.sha256(b"plait-bytes-v1").hexdigest()

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        return [list(d.encode("utf-8")) for d in docs]


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, file: Path, eod: str | None):
        try:
            # deferred: tokenizers loads only when a tokenizer is used
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise PlaitError(
                "tokenizer: the 'tokenizers' package is missing; pip install tokenizers"
            ) from None
        try:
            self.tok = _Tok.from_file(str(file))
        except Exception as e:  # the library raises a bare Exception for a bad file
            raise PlaitError(f"tokenizer: {str(file)!r} is not a tokenizer.json: {e}") from None
        self.name, self.sha256 = str(file), file_sha256(file)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        names = (eod,) if eod else EOD_CANDIDATES
        ids = [(n, self.tok.token_to_id(n)) for n in names]
        found = [(n, i) for n, i in ids if i is not None]
        if not found:
            raise PlaitError(
                f"tokenizer: {str(file)!r} has no end-of-document token "
                f"{'(' + eod + ')' if eod else 'among ' + ', '.join(EOD_CANDIDATES)}; "
                "name one with --eod"
            )
        self.eod_token, self.eod_id = found[0]

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(docs, add_special_tokens=False)]


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"

    def __init__(self, file: Path, eod: str | None):
        try:
            # deferred: tiktoken is an optional extra (data)
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe
        except ImportError:
            raise PlaitError(
                f"tokenizer: {str(file)!r} needs the 'tiktoken' package; pip install tiktoken"
            ) from None
        ranks = load_tiktoken_bpe(str(file))
        eod = eod or "<|endoftext|>"
        self.eod_id = len(ranks)
        pat = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
        self.enc = tiktoken.Encoding(
            name=file.stem, pat_str=pat, mergeable_ranks=ranks, special_tokens={eod: self.eod_id}
        )
        self.name, self.sha256 = str(file), file_sha256(file)
        self.vocab_size = self.eod_id + 1

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(docs)


def load_tokenizer(spec: str, eod: str | None = None) -> Tokenizer:
    """``bytes``, a ``tokenizer.json``, a folder holding one (``save_pretrained``, or an
    ``hf_pretrained`` model folder), or a ``.tiktoken`` file."""
    if spec == "bytes":
        return ByteTokenizer()
    p = Path(spec)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return HFTokenizer(p / "tokenizer.json", eod)
    if p.is_file() and p.suffix == ".tiktoken":
        return TiktokenTokenizer(p, eod)
    if p.is_file():
        return HFTokenizer(p, eod)
    if spec in TIKTOKEN_NAMES:
        raise PlaitError(
            f"tokenizer: {spec!r} is a tiktoken encoding name, which tiktoken would download; "
            "nothing is downloaded here: give the path of its .tiktoken file"
        )
    why = "has no tokenizer.json" if p.is_dir() else "does not exist"
    raise PlaitError(
        f"tokenizer: {spec!r} {why}; give 'bytes', a tokenizer.json, a save_pretrained folder "
        "or a .tiktoken file (train one with: plait data train-tokenizer)"
    )


def train_bpe(
    files: list[Path], out: Path, vocab_size: int, eod: str = "<|endoftext|>"
) -> HFTokenizer:
    """Byte-level BPE trained on local files with the ``tokenizers`` trainer; writes
    ``out/tokenizer.json`` (a folder ``load_tokenizer`` and Transformers both read)."""
    # deferred: tokenizers loads only when a tokenizer is used
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if not files:
        raise PlaitError("train-tokenizer: no input files; give text files, folders or globs")
    if vocab_size < 256 + 1:
        raise PlaitError(f"--vocab-size: {vocab_size} is not allowed; must be >= 257")
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eod],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return HFTokenizer(out / "tokenizer.json", eod)

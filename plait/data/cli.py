"""``plait data train-tokenizer`` and ``plait data prepare``: the parser and the commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from plait.data.prepare import expand_inputs, prepare
from plait.data.tokenizer import train_bpe
from plait.errors import PlaitError


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="train a tokenizer, tokenize a corpus into token files")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    t = dsub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on local files")
    t.add_argument("inputs", nargs="+", help="text files, folders or globs")
    t.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    t.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (>= 257)")
    t.add_argument("--eod", default="<|endoftext|>", help="end-of-document special token")

    p = dsub.add_parser("prepare", help="tokenize documents into a folder of token files")
    p.add_argument(
        "inputs",
        nargs="+",
        help="text files (one document each), .jsonl/.json/.ndjson (one per line), .parquet "
        "(one per row), a datasets save_to_disk folder (one per row); folders and globs "
        "expand in sorted order",
    )
    p.add_argument("--out", required=True, help="output folder (data.path=... of a tokens run)")
    p.add_argument(
        "--tokenizer",
        default="bytes",
        help="bytes, a tokenizer.json, a save_pretrained folder, or a .tiktoken file",
    )
    p.add_argument("--field", default="text", help="JSON Lines: the text field")
    p.add_argument("--column", default="text", help="Parquet: the text column")
    p.add_argument("--eod", help="end-of-document token (default: the tokenizer's own)")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="tokenizer processes"
    )
    p.add_argument(
        "--shard-tokens", type=int, default=1 << 28, help="tokens per shard file (default 2^28)"
    )


def main(args: argparse.Namespace) -> int:
    if args.data_cmd == "train-tokenizer":
        tok = train_bpe(expand_inputs(args.inputs), Path(args.out), args.vocab_size, args.eod)
        print(f"wrote {tok.name} (vocab {tok.vocab_size}, end of document {args.eod!r})")
        return 0
    for flag in ("workers", "shard_tokens"):
        if getattr(args, flag) < 1:
            raise PlaitError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} must be >= 1")
    meta = prepare(
        args.inputs, args.out, args.tokenizer, field=args.field, column=args.column,
        workers=args.workers, shard_tokens=args.shard_tokens, eod=args.eod,
    )  # fmt: skip
    if meta.get("up_to_date"):
        print(f"{args.out}: up to date ({meta['tokens']:,} tokens); nothing to do")
        return 0
    bad = meta["invalid_utf8"]
    print(
        f"wrote {args.out}: {meta['documents']:,} documents, {meta['tokens']:,} tokens "
        f"({meta['dtype']}, vocab {meta['vocab_size']}, {len(meta['shards'])} shards)"
        + (f"; {meta['skipped_empty']} empty files left out" if meta["skipped_empty"] else "")
        + (
            f"; invalid UTF-8 in {bad['documents']} documents, {bad['replaced_chars']} "
            "characters replaced by U+FFFD"
            if bad["documents"]
            else ""
        )
    )
    return 0

"""``python -m plait.train CONFIG [key=value ...]``: the entry point every launcher runs."""

from __future__ import annotations

import sys

from plait.config import load_config
from plait.errors import PlaitError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m plait.train CONFIG [key=value ...]")
        return 0 if argv else 2
    from plait.trainer import train

    try:
        train(load_config(argv[0], argv[1:]))
    except PlaitError as e:
        print(f"plait: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m plait.train CONFIG [key=value ...]``: the entry point every launcher runs."""

from __future__ import annotations

import sys
from typing import Any

from plait import failure
from plait.config import from_dict, load_config
from plait.errors import PlaitError
from plait.trainer import RunResult, train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m plait.train CONFIG [key=value ...]")
        return 0 if argv else 2
    try:
        with failure.recorded():
            train(load_config(argv[0], argv[1:]))
    except PlaitError as e:
        print(f"plait: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_config(cfg_dict: dict[str, Any], return_state: bool = False) -> RunResult:
    """In a process a launcher started (plait.launch.command.run_entry): rebuild the already
    validated config and train."""
    with failure.recorded():
        return train(from_dict(cfg_dict), return_state=return_state)


if __name__ == "__main__":
    sys.exit(main())

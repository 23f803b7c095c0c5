"""``python -m plait.train CONFIG [key=value ...]``: the entry point every launcher runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from plait import failure, preemption
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
    except preemption.Preempted as e:  # the checkpoint is saved; the status asks for a rerun
        print(f"plait: {e}", file=sys.stderr, flush=True)
        return preemption.exit_status()
    return 0


def run_config(cfg_dict: dict[str, Any], return_state: bool = False) -> RunResult:
    """In a process a launcher started (plait.launch.command.run_entry): rebuild the already
    validated config and train."""
    cfg = from_dict(cfg_dict)
    try:
        with failure.recorded():  # a Preempted is not recorded as a failure
            return train(cfg, return_state=return_state)
    except preemption.Preempted as e:  # a clean stop, not a failure for the agent to restart
        return RunResult(run_dir=Path(cfg.log.run_dir), preempted=str(e))


if __name__ == "__main__":
    sys.exit(main())

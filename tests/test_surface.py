"""The public surface (CLI subcommands and flags, config keys and defaults) is frozen in
surface.json, so changing it is a decision, not an accident.
After an intended change: python tests/test_surface.py --update"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plait.cli import _parser
from plait.config import load_config

SNAPSHOT = Path(__file__).with_name("surface.json")


def surface() -> dict:
    ap = _parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    cli = {
        name: sorted(
            opt
            for a in p._actions
            for opt in (a.option_strings or [a.dest])
            if opt not in ("-h", "--help")
        )
        for name, p in sub.choices.items()
    }
    return {"cli": cli, "config": load_config(None, []).to_dict()}


def test_public_surface_is_unchanged():
    expected = json.loads(SNAPSHOT.read_text())
    assert surface() == expected, (
        "public surface changed; if intended run: python tests/test_surface.py --update"
    )


if __name__ == "__main__" and "--update" in sys.argv:
    SNAPSHOT.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")

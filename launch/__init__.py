"""Ways to start ranks. ``local``: N processes on this machine, no launcher needed."""

from plait.launch.local import run_local

__all__ = ["run_local"]

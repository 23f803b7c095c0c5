"""torchrun across two hosts for real: ``plait launch torchrun --hosts nodeA,nodeB`` run on each
"host" (a network namespace with its own hostname), 2 ranks per node, c10d rendezvous on nodeA,
gloo over the veth pair; the 4-rank run matches one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from launch_helpers import (
    CONFIG,
    ROOT,
    TINY,
    assert_same_losses,
    assert_session_gone,
    kill_session,
    reference_dir,
)
from netns import two_nodes


def run_on_nodes(prefixes: dict[str, list[str]], args: list[str], timeout: float) -> dict[str, str]:
    """Start ``plait launch ARGS`` on every node at once; each in its own session, all killed
    if any hangs, and every session checked empty afterwards."""
    procs = {
        h: subprocess.Popen(
            [*pre, sys.executable, "-m", "plait.cli", "launch", *args],
            cwd=ROOT,
            env=dict(os.environ),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for h, pre in prefixes.items()
    }
    out = {}
    try:
        for h, p in procs.items():
            out[h], _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs.values():
            kill_session(p, grace=0)
        raise AssertionError(f"multi-node launch hung for {timeout}s") from None
    for h, p in procs.items():
        assert_session_gone(p.pid)
        assert p.returncode == 0, f"{h} failed ({p.returncode}):\n{out[h][-3000:]}"
    return out


@pytest.mark.timeout(180)
def test_torchrun_two_nodes_over_veth(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    with two_nodes(tmp_path) as nodes:
        out = run_on_nodes(
            nodes,
            [
                "torchrun",
                CONFIG,
                *TINY,
                "--run-dir",
                str(run),
                "--nproc",
                "2",
                "--hosts",
                "nodeA,nodeB",
                "--port",
                "29511",
                "--rdzv-timeout",
                "60",
            ],  # fmt: skip
            timeout=150,
        )
    for h, text in out.items():
        assert text.startswith(f"# on {h}:\n"), text[:200]  # each host ran its own command
        assert "--rdzv-endpoint nodeA:29511" in text
    assert_same_losses(reference_dir(tmp_path_factory), run, world_size=4, launched_by="torchrun")

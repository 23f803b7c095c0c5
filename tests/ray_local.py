"""A local Ray cluster for the tests and the benchmark: ``ray start --head --block`` on 127.0.0.1
with free ports, its temp dir inside the run folder (a short /tmp path: Ray's unix sockets must
fit in 107 bytes) and HOME there too, so nothing lands in ~/.ray. Stopped by killing its own
session, never with ``ray stop`` (which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from launch_helpers import assert_session_gone, free_port, kill_session


@contextmanager
def ray_cluster(num_cpus: int = 2):
    """Yields (address, run dir to use, env for the driver)."""
    base = Path(tempfile.mkdtemp(prefix="plr"))
    run, home = base / "run", base / "home"
    home.mkdir()
    port = free_port()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    ray += ["--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus)]
    ray += ["--temp-dir", str(run / "ray-tmp"), "--include-dashboard", "false"]
    ray += ["--ray-client-server-port", str(free_port())]
    ray += ["--dashboard-agent-listen-port", str(free_port())]
    log = base / "ray-start.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            ray, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", run, env
    finally:
        kill_session(proc)
        assert_session_gone(proc.pid)
        assert not (home / ".ray").exists() and not (home / "ray_results").exists()
        shutil.rmtree(base, ignore_errors=True)

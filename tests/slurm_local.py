"""A real SLURM for the tests: Debian's slurmctld + slurmd + munge, installed with apt-get when
missing (root), configured in a temp dir, on localhost or on the two network-namespace hosts of
netns.py. Every daemon runs in its own session and is killed by that session at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from launch_helpers import free_port, kill_session

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True, env=env, timeout=300, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _daemon(stack: ExitStack, argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    f = stack.enter_context(open(log, "w"))
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.callback(kill_session, p)
    return p


def _wait(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _munge_ok() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def _start_munge(stack: ExitStack, w: Path) -> None:
    """Reuse a running munged (e.g. the machine's own); otherwise run one for the tests."""
    if _munge_ok():
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        subprocess.run(["mungekey", "--create", "--force"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    _daemon(
        stack,
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F"],
        w / "munged.log",
        dict(os.environ),
    )
    _wait(_munge_ok, "munged")


def _conf(w: Path, nodes: dict[str, str | None]) -> str:
    """slurm.conf; ``nodes`` maps node name -> address (None: this host, as slurmd -C sees it)."""
    hw = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout.splitlines()[0]
    hw = hw.split(None, 1)[1]  # drop "NodeName=<host>": CPUs=2 Boards=1 ... RealMemory=...
    head, addr = next(iter(nodes.items()))
    lines = [
        "ClusterName=plait", f"SlurmctldHost={head}" + (f"({addr})" if addr else ""),
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "SlurmUser=root", "SlurmdUser=root", "MailProg=/bin/true", "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        f"StateSaveLocation={w}/state", f"SlurmdSpoolDir={w}/spool-%n",
        f"SlurmctldPidFile={w}/slurmctld.pid", f"SlurmdPidFile={w}/slurmd-%n.pid",
        f"SlurmctldLogFile={w}/slurmctld.log", f"SlurmdLogFile={w}/slurmd-%n.log",
        *(f"NodeName={n}" + (f" NodeAddr={a}" if a else "") + f" {hw} State=UNKNOWN" for n, a in nodes.items()),
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


@contextmanager
def local_slurm(w: Path, hosts: dict[str, list[str]] | None = None, addrs: dict | None = None):
    """Start SLURM; yields (env with SLURM_CONF, argv prefix for running client commands).
    ``hosts``: {node: argv prefix entering it} (netns.two_nodes); None: one node, this host."""
    ensure_installed()
    w.mkdir(parents=True, exist_ok=True)
    (w / "state").mkdir(exist_ok=True)
    if hosts is None:
        me = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        hosts, addrs = {me: []}, {me: None}
    (w / "slurm.conf").write_text(_conf(w, {n: addrs[n] for n in hosts}))
    env = {**os.environ, "SLURM_CONF": str(w / "slurm.conf")}
    head = next(iter(hosts.values()))
    with ExitStack() as stack:
        _start_munge(stack, w)
        _daemon(stack, [*head, "slurmctld", "-D", "-f", env["SLURM_CONF"]], w / "ctld.out", env)
        for n, pre in hosts.items():
            _daemon(
                stack,
                [*pre, "slurmd", "-D", "-N", n, "-f", env["SLURM_CONF"]],
                w / f"d-{n}.out",
                env,
            )

        def idle() -> bool:
            r = subprocess.run(
                [*head, "sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=env
            )
            return r.stdout.split() == ["idle"] * len(hosts)

        _wait(idle, "slurm nodes idle", timeout=60)
        yield env, head

"""Two "hosts" on one machine: two network namespaces joined by a veth pair, each entered with
its own hostname and /etc/hosts (``nsenter --net`` + ``unshare --uts --mount``), so rendezvous
and gloo resolve nodeA/nodeB to their own addresses. Needs root, iproute2 and util-linux.
``nsenter`` rather than ``ip netns exec``: the latter remounts /sys and hides /sys/fs/cgroup."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

ADDRS = {"nodeA": "10.200.0.1", "nodeB": "10.200.0.2"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextmanager
def two_nodes(workdir: Path):
    """Yields {hostname: argv prefix that runs a command as that host}; removes all on exit."""
    tag = f"pl{os.getpid() % 100000}"
    ns = {"nodeA": f"{tag}a", "nodeB": f"{tag}b"}
    hosts = Path(workdir) / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in ADDRS.items()))
    try:
        for n in ns.values():
            _ip("netns", "add", n)
        _ip("link", "add", f"v{tag}a", "type", "veth", "peer", "name", f"v{tag}b")
        for h, n in ns.items():
            dev = f"v{n}"
            _ip("link", "set", dev, "netns", n)
            _ip("-n", n, "addr", "add", f"{ADDRS[h]}/24", "dev", dev)
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "link", "set", dev, "up")
        script = 'mount --bind "$1" /etc/hosts && hostname "$0" && shift && exec "$@"'
        yield {
            h: [
                "nsenter",
                f"--net=/run/netns/{n}",
                "unshare",
                "--uts",
                "--mount",
                "bash",
                "-c",
                script,
                h,
                str(hosts),
            ]  # fmt: skip
            for h, n in ns.items()
        }
    finally:
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)

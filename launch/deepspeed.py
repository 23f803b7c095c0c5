"""DeepSpeed's launcher (``python -m deepspeed.launcher.runner``) starting plait's entry point.

plait's trainer does not need the DeepSpeed engine for this: the launcher only starts ranks
(RANK/WORLD_SIZE/LOCAL_RANK). Each node runs its own launcher (``--no_ssh --node_rank R``)
from a generated hostfile, so no passwordless ssh/pdsh is needed; ``--num_gpus`` is always
given because on CPU DeepSpeed finds no devices to count."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from plait.errors import PlaitError
from plait.launch.command import Entry, Launch

DEFAULT_PORT = 29500
_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s+slots=(\d+)\s*$")


def parse_hosts(spec: str) -> dict[str, int]:
    """``"nodeA:2,nodeB:2"`` -> {"nodeA": 2, "nodeB": 2}."""
    hosts: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, slots = item.partition(":")
        if not slots.isdigit() or int(slots) < 1 or name in hosts:
            raise PlaitError(f"--hosts: '{item}' is not allowed; write HOST:SLOTS, each host once")
        hosts[name] = int(slots)
    if not hosts:
        raise PlaitError("--hosts: empty; write HOST:SLOTS[,HOST:SLOTS...]")
    return hosts


def hostfile_text(hosts: dict[str, int]) -> str:
    return "".join(f"{h} slots={n}\n" for h, n in hosts.items())


def read_hostfile(path: Path) -> dict[str, int]:
    hosts: dict[str, int] = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise PlaitError(f"--hostfile: {path}:{i}: '{line}' is not 'HOST slots=N'")
        hosts[m.group(1)] = int(m.group(2))
    if not hosts:
        raise PlaitError(f"--hostfile: {path} lists no hosts")
    return hosts


def check_resolvable(hosts: dict[str, int]) -> None:
    """An unknown host fails here, before any rank starts, not as a rendezvous timeout."""
    for h in hosts:
        try:
            socket.getaddrinfo(h, None)
        except OSError:
            raise PlaitError(
                f"hostfile: host '{h}' does not resolve; allowed: names this machine can resolve "
                "(check /etc/hosts or DNS)"
            ) from None


def this_node_rank(hosts: dict[str, int], hostname: str) -> int:
    names = list(hosts)
    if len(names) == 1 and names[0] in ("localhost", "127.0.0.1"):
        return 0
    if hostname in names:
        return names.index(hostname)
    raise PlaitError(
        f"this host '{hostname}' is not in the hostfile ({', '.join(names)}); "
        "run on one of them or pass --node-rank"
    )


def deepspeed_launch(
    entry: Entry,
    python: str,
    hosts: dict[str, int],
    hostfile: Path,
    *,
    node_rank: int = 0,
    port: int = DEFAULT_PORT,
    write_hostfile: bool = True,
) -> Launch:
    """The command for node ``node_rank`` of ``hosts`` (slots = processes on that node)."""
    names = list(hosts)
    if not 0 <= node_rank < len(names):
        raise PlaitError(
            f"--node-rank: {node_rank} is not allowed; must be in [0, {len(names) - 1}]"
        )
    slots = set(hosts.values())
    if len(slots) != 1:
        raise PlaitError(
            f"hostfile: slots {sorted(slots)} differ; plait needs the same count per node"
        )
    master = "127.0.0.1" if len(names) == 1 else names[0]
    argv = [python, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile)]
    argv += ["--no_ssh", "--node_rank", str(node_rank), "--num_gpus", str(slots.pop())]
    argv += ["--master_addr", master, "--master_port", str(port), "--no_local_rank"]
    argv += ["--module", *entry.module_args()]
    files = {Path(hostfile): hostfile_text(hosts)} if write_hostfile else {}
    return Launch(argv, files=files, node=names[node_rank] if len(names) > 1 else None)

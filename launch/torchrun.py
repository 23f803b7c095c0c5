"""torchrun (``python -m torch.distributed.run``): one node with elastic restarts, or several
nodes meeting at a c10d rendezvous on the first host. torchrun's flags come before the
entry point; everything after ``-m plait.train`` belongs to plait."""

from __future__ import annotations

from plait.errors import PlaitError
from plait.launch.command import SIGNALS_ENV, SIGNALS_HANDLED, Entry, Launch

# torchrun's restarts re-create the rendezvous; with the TCP store shared between the agent
# and rank 0 a restarted group can find a stale store and hang (torch's own tests set this).
# SIGNALS_ENV: torchrun passes SLURM's SIGUSR1 on to its ranks too (plait.launch.command)
ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", SIGNALS_ENV: SIGNALS_HANDLED}
DEFAULT_PORT = 29400


def torchrun_launch(
    entry: Entry,
    python: str,
    *,
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "plait",
    max_restarts: int = 0,
    rdzv_timeout: int = 300,
    node: str | None = None,
) -> Launch:
    """One node's command. ``nnodes == 1`` and no endpoint: ``--standalone`` (a free local port)."""
    if nproc < 1:
        raise PlaitError(f"--nproc: {nproc} is not allowed; must be >= 1")
    if nnodes < 1:
        raise PlaitError(f"--nnodes: {nnodes} is not allowed; must be >= 1")
    if nnodes > 1 and not rdzv_endpoint:
        raise PlaitError(
            f"--nnodes {nnodes} needs a rendezvous: pass --hosts A,B (first host is the "
            "endpoint) or --rdzv-endpoint HOST:PORT"
        )
    argv = [python, "-m", "torch.distributed.run"]
    if rdzv_endpoint:
        argv += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d"]
        argv += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
    else:
        argv += ["--standalone", "--nnodes", "1"]
    argv += ["--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts)]
    argv += ["--rdzv-conf", f"join_timeout={rdzv_timeout}", "-m", *entry.module_args()]
    return Launch(argv, dict(ENV), node=node)


def node_launches(
    entry: Entry,
    python: str,
    hosts: list[str],
    *,
    nproc: int,
    nnodes: int | None = None,
    port: int = DEFAULT_PORT,
    **kw,
) -> list[Launch]:
    """The command for each host; the first host serves the rendezvous. With c10d the commands
    are the same on every node (ranks are assigned at rendezvous), printed per host for clarity."""
    if not hosts:
        raise PlaitError("--hosts: empty; give the nodes as HOST1,HOST2,...")
    if len(set(hosts)) != len(hosts):
        raise PlaitError(f"--hosts: {','.join(hosts)} names a host twice")
    if nnodes is not None and nnodes != len(hosts):
        raise PlaitError(
            f"--nnodes: {nnodes} does not match the {len(hosts)} hosts in --hosts ({','.join(hosts)})"
        )
    endpoint = f"{hosts[0]}:{port}"
    return [
        torchrun_launch(
            entry, python, nproc=nproc, nnodes=len(hosts), rdzv_endpoint=endpoint, node=h, **kw
        )
        for h in hosts
    ]

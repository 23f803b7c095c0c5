"""``plait launch BACKEND CONFIG [key=value ...] [--dry-run] [options]``: build the backend's exact
command, print it, run it. Options a backend does not use are refused, not silently ignored."""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from plait import failure, ports, preemption
from plait.config import load_config
from plait.errors import PlaitError
from plait.launch import accelerate as acc
from plait.launch import deepspeed as ds
from plait.launch import slurm
from plait.launch import torchrun as tr
from plait.launch.command import Entry, Launch, run
from plait.launch.ray import ray_launch

BACKENDS = ("torchrun", "deepspeed", "accelerate", "slurm", "ray")
_T, _D, _A, _S, _R = BACKENDS
APPLIES = {
    "hosts": {_T, _D, _A}, "hostfile": {_D}, "nnodes": {_T, _A, _S}, "node_rank": {_T, _D, _A},
    "port": {_T, _D, _A, _S}, "rdzv_endpoint": {_T}, "rdzv_id": {_T}, "rdzv_timeout": {_T},
    "max_restarts": {_T, _S}, "time": {_S}, "partition": {_S}, "cpus_per_task": {_S}, "mem": {_S}, "exclusive": {_S}, "signal_time": {_S},
    "job_name": {_S}, "wait": {_S}, "address": {_R}, "gpu": {_A, _S, _R},
}  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "launch", help="run a config through torchrun, deepspeed, accelerate, slurm or ray"
    )
    p.add_argument("backend", choices=BACKENDS)
    p.add_argument("config", help="YAML config, e.g. configs/gpt_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--dry-run", action="store_true", help="print the command(s), run nothing")
    p.add_argument("--nproc", type=int, default=1, help="processes per node (ray: workers)")
    p.add_argument("--run-dir", help="run folder (same as log.run_dir=...)")
    g = p.add_argument_group("nodes (torchrun, deepspeed, accelerate, slurm)")
    g.add_argument("--nnodes", type=int, help="number of nodes (default: 1, or len(--hosts))")
    g.add_argument("--hosts", help="HOST1,HOST2 (deepspeed: HOST:SLOTS); first is the rendezvous")
    g.add_argument("--node-rank", type=int, help="this node's index (default: from hostname)")
    g.add_argument("--port", type=int, help="rendezvous / master port on the first host")
    g.add_argument("--gpu", action="store_true", default=None, help="use GPUs (default CPU)")
    g = p.add_argument_group("torchrun")
    g.add_argument("--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous")
    g.add_argument("--rdzv-id", help="job id shared by all nodes (default: plait)")
    g.add_argument("--rdzv-timeout", type=int, help="seconds to wait for all nodes (default 300)")
    g.add_argument("--max-restarts", type=int, help="elastic restarts of the whole group")
    g = p.add_argument_group("deepspeed")
    g.add_argument("--hostfile", help="existing DeepSpeed hostfile ('HOST slots=N' lines)")
    g = p.add_argument_group("slurm")
    g.add_argument("--time", help="wall-clock limit, e.g. 30 or 2:00:00")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument(
        "--cpus-per-task",
        type=int,
        help="CPUs of each node's task, shared by its ranks (default: --nproc)",
    )
    g.add_argument("--mem", help="memory per node, e.g. 64G (sbatch --mem)")
    g.add_argument("--exclusive", action="store_true", default=None, help="whole nodes only")
    g.add_argument(
        "--signal-time", type=int,
        help="seconds before the time limit the job saves a checkpoint and requeues (default 120)",
    )  # fmt: skip
    g.add_argument("--job-name", help="job name (default: the config's name)")
    g.add_argument("--wait", action="store_true", default=None, help="wait for the job to end")
    g = p.add_argument_group("ray")
    g.add_argument("--address", help="Ray cluster address HOST:PORT (required)")


def main(args: argparse.Namespace) -> int:
    launches = build(args)
    if args.dry_run:
        print("\n".join(la.describe() for la in launches))
        return 0
    mine = _pick_node(launches, args.node_rank)
    if args.backend == _T:
        _check_port(mine, "--port" if args.port else "--rdzv-endpoint")
    print(mine.describe(), flush=True)
    preemption.clear_marker(args.run_dir_resolved)
    rc, cause = run_watched(mine, local=args.backend in (_T, _D, _A))
    # a signalled stop: the ranks saved and rank 0 left the marker, whatever the launcher in
    # between made of their exit (plait.preemption)
    if (info := preemption.read_marker(args.run_dir_resolved)) is not None:
        print(f"plait: {preemption.describe(info)}", file=sys.stderr, flush=True)
        return preemption.EXIT_REQUEUE
    if cause is not None:  # the failing rank's own words, last
        raise PlaitError(failure.describe(cause))
    if rc != 0:
        raise PlaitError(f"{args.backend} exited with code {rc}")
    if args.backend == "slurm" and not args.wait:
        print(f"submitted; output in {Path(args.run_dir_resolved) / 'slurm-<jobid>.out'}")
    else:
        print(f"run folder: {args.run_dir_resolved}")
    return 0


def run_watched(launch: Launch, *, local: bool) -> tuple[int, failure.Failure | None]:
    """Run the command; its ranks (on this machine: ``local``) say why they fail
    (plait.failure). A failure that will repeat ends the job at once, though the backend may
    have restarts left (torchrun's elastic agent restarts on any failure); returns the exit
    code and the failure to report, if any."""
    if launch.argv[:1] == ["sbatch"] and "--wait" in launch.argv:
        return slurm.wait_for_job(launch), None  # a signal goes to the job, not to sbatch
    if not local:
        return run(launch), None
    folder = Path(tempfile.mkdtemp(prefix="plait-failures-"))
    launch.env[failure.ENV] = str(folder)

    def final() -> bool:
        found = failure.read(folder)
        return bool(found) and found[0].final

    try:
        rc = run(launch, stop=final)
        found = failure.read(folder) if rc != 0 else []
        return rc, (found[0] if found else None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build(args: argparse.Namespace) -> list[Launch]:
    """Validate the options and the config (before anything starts), then build the command(s)."""
    # deferred: preflight loads torch (it builds the meta model); the plait parser imports this
    # module, and --help stays instant
    from plait.preflight import default_run_dir, validate

    for key, backends in APPLIES.items():
        if getattr(args, key) is not None and args.backend not in backends:
            flag = "--" + key.replace("_", "-")
            raise PlaitError(
                f"{flag} does not apply to {args.backend}; it is for {', '.join(sorted(backends))}"
            )
    overrides = list(args.overrides) + ([f"log.run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    run_dir = default_run_dir(cfg).resolve()
    args.run_dir_resolved = run_dir
    entry = Entry(args.config, (*args.overrides, f"log.run_dir={run_dir}"))
    py = sys.executable
    b = args.backend
    # deferred: host_check loads torch (see above); files and folders before anything starts,
    # this host's device and memory where its ranks run here (after the layout checks)
    from plait.host_check import check_device, check_files

    check_files(cfg)
    worlds: list[int] = []

    def validated(c, world: int):
        worlds.append(world)
        return validate(c, world)

    launches = _build(args, b, entry, py, cfg, validated, run_dir)
    if b in (_T, _D, _A) and not args.dry_run and worlds:
        check_device(cfg, worlds[-1], args.nproc)
    return launches


def _build(args, b, entry, py, cfg, validate, run_dir) -> list[Launch]:
    if b == _T:
        return _torchrun(args, entry, py, cfg, validate)
    if b == _D:
        return _deepspeed(args, entry, py, cfg, validate, run_dir)
    if b == _A:
        return _accelerate(args, entry, py, cfg, validate, run_dir)
    if b == _S:
        nnodes = args.nnodes or 1
        validate(cfg, nnodes * args.nproc)
        script = slurm.sbatch_script(
            entry, py, nnodes=nnodes, nproc=args.nproc, run_dir=run_dir, workdir=Path.cwd(),
            job_name=args.job_name or cfg.name, time=args.time, partition=args.partition,
            gpus_per_node=args.nproc if args.gpu else 0, cpus_per_task=args.cpus_per_task,
            port=args.port, max_restarts=args.max_restarts or 0, mem=args.mem,
            exclusive=bool(args.exclusive), signal_time=(
                slurm.DEFAULT_SIGNAL_TIME if args.signal_time is None else args.signal_time),
        )  # fmt: skip
        return [slurm.sbatch_launch(run_dir / "launch.sbatch", script, wait=bool(args.wait))]
    validate(cfg, args.nproc)
    return [ray_launch(entry, py, address=args.address, workers=args.nproc, use_gpu=bool(args.gpu))]


def _host_list(args) -> list[str] | None:
    if not args.hosts:
        return None
    return [h.split(":")[0] for h in args.hosts.split(",") if h.strip()]


def _torchrun(args, entry, py, cfg, validate) -> list[Launch]:
    kw = dict(
        max_restarts=args.max_restarts or 0,
        rdzv_timeout=args.rdzv_timeout or 300,
        rdzv_id=args.rdzv_id or "plait",
    )
    hosts = _host_list(args)
    if hosts:
        if args.rdzv_endpoint:
            raise PlaitError("--rdzv-endpoint and --hosts: give one (--hosts uses the first host)")
        launches = tr.node_launches(
            entry, py, hosts, nproc=args.nproc, nnodes=args.nnodes, port=args.port or tr.DEFAULT_PORT, **kw
        )  # fmt: skip
        validate(cfg, len(hosts) * args.nproc)
        return launches
    nnodes = args.nnodes or 1
    endpoint = args.rdzv_endpoint
    if endpoint and args.port:
        raise PlaitError("--port and --rdzv-endpoint: give one (the endpoint has the port)")
    if args.port and nnodes == 1:  # one node: the rendezvous on this machine, at that port
        endpoint = f"127.0.0.1:{args.port}"
    elif args.port:
        raise PlaitError(
            f"--port with --nnodes {nnodes} needs the first host: pass --hosts A,B (the port is "
            "on A) or --rdzv-endpoint HOST:PORT"
        )
    validate(cfg, nnodes * args.nproc)
    return [
        tr.torchrun_launch(entry, py, nproc=args.nproc, nnodes=nnodes, rdzv_endpoint=endpoint, **kw)
    ]


def _check_port(launch: Launch, flag: str) -> None:
    """The rendezvous this machine would serve must have its port free (plait.ports), else
    torchrun waits silently on whatever holds it."""
    argv = launch.argv
    if "--rdzv-endpoint" in argv:
        host, _, port = argv[argv.index("--rdzv-endpoint") + 1].rpartition(":")
        if not port.isdigit():
            raise PlaitError(f"--rdzv-endpoint: {host}:{port} is not HOST:PORT")
        ports.check_free(host or "127.0.0.1", int(port), flag)


def _deepspeed(args, entry, py, cfg, validate, run_dir) -> list[Launch]:
    if args.hostfile and args.hosts:
        raise PlaitError("--hostfile and --hosts: give one")
    if args.hostfile:
        hosts, path, write = ds.read_hostfile(Path(args.hostfile)), Path(args.hostfile), False
    else:
        spec = args.hosts or "localhost"
        spec = ",".join(h if ":" in h else f"{h}:{args.nproc}" for h in spec.split(","))
        hosts, path, write = ds.parse_hosts(spec), run_dir / "hostfile", True
    validate(cfg, sum(hosts.values()))
    port = args.port or ds.DEFAULT_PORT
    if not args.dry_run:
        ds.check_resolvable(hosts)
    return [
        ds.deepspeed_launch(entry, py, hosts, path, node_rank=r, port=port, write_hostfile=write)
        for r in range(len(hosts))
    ]


def _accelerate(args, entry, py, cfg, validate, run_dir) -> list[Launch]:
    hosts = _host_list(args) or ["127.0.0.1"]
    nnodes = args.nnodes or len(hosts)
    if nnodes != len(hosts):
        raise PlaitError(f"--nnodes: {nnodes} does not match the {len(hosts)} hosts in --hosts")
    validate(cfg, nnodes * args.nproc)
    out = []
    for r, h in enumerate(hosts):
        text = acc.accelerate_config(
            nproc=args.nproc, nnodes=nnodes, node_rank=r, main_ip=hosts[0],
            main_port=args.port or acc.DEFAULT_PORT, cpu=not args.gpu,
        )  # fmt: skip
        la = acc.accelerate_launch(
            entry, py, run_dir / f"accelerate-node{r}.yaml", text, cpu=not args.gpu
        )
        la.node = h if nnodes > 1 else None
        out.append(la)
    return out


def _pick_node(launches: list[Launch], node_rank: int | None) -> Launch:
    """Single node: its command. Several: the one for --node-rank, or for this host's name."""
    if node_rank is not None:
        if not 0 <= node_rank < len(launches):
            raise PlaitError(
                f"--node-rank: {node_rank} is not allowed; must be in [0, {len(launches) - 1}]"
            )
        return launches[node_rank]
    if len(launches) == 1:
        return launches[0]
    me = socket.gethostname()
    for la in launches:
        if la.node in (me, me.split(".")[0]):
            return la
    names = ", ".join(str(la.node) for la in launches)
    raise PlaitError(
        f"this host '{me}' is not one of the nodes ({names}); pass --node-rank or --dry-run"
    )

"""The ``plait`` command. Subcommands import their heavy parts lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plait import preemption
from plait.config import load_config
from plait.errors import ConfigError, PlaitError
from plait.launch import run_local
from plait.launch.cli import add_parser as add_launch
from plait.launch.cli import main as launch


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="plait",
        description="Data, tensor and pipeline parallel training around one model interface.",
    )
    ap.add_argument("--version", action="version", version=f"plait {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train from a YAML config on this machine")
    t.add_argument("config", help="YAML file, or a shipped config's name, e.g. gpt_tiny")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=20")
    t.add_argument(
        "--nproc", type=int, default=1, help="local processes to start (gloo on CPU, nccl on GPU)"
    )
    t.add_argument("--run-dir", help="run folder (same as log.run_dir=...)")
    t.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="with --nproc: restart all ranks this many times when one dies; each restart "
        "resumes from the newest checkpoint (set checkpoint.every)",
    )

    c = sub.add_parser("compare", help="runs' loss curves side by side (and a PNG)")
    c.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    c.add_argument("--png", help="also draw training / eval loss (and --metric) to this PNG")
    c.add_argument("--metric", action="append", default=[], help="another panel (repeatable)")
    c.add_argument("--x", choices=["step", "tokens"], default="step", help="x axis")
    c.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1) (0: off)")

    r = sub.add_parser("report", help="one run's loss, lr, throughput, MFU and memory")
    r.add_argument("run")
    r.add_argument("--png", help="draw the panels to this PNG")

    e = sub.add_parser(
        "export", help="a checkpoint of any layout -> one safetensors file of full weights"
    )
    e.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/x/checkpoints/step-00000100")
    e.add_argument(
        "out",
        help="output .safetensors file (load it with checkpoint.init_from=...), or with --format hf a folder",
    )
    e.add_argument(
        "--format",
        choices=("safetensors", "hf"),
        default="safetensors",
        help="hf: a Transformers save_pretrained folder (model.name=hf runs), loadable with from_pretrained",
    )

    sd = sub.add_parser(
        "seed", help="write a seed checkpoint: the config's initial weights as one safetensors file"
    )
    sd.add_argument("config", help="YAML config, e.g. configs/gpt_tiny.yaml")
    sd.add_argument("out", help="output .safetensors file (start runs with checkpoint.init_from=)")
    sd.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.seed=1")

    sub.add_parser("info", help="versions, devices, backends, optional engines")
    _config_parser(sub)
    _plan_parser(sub)

    pt = sub.add_parser("pp-timeline", help="simulated (or a run's measured) pipeline timeline PNG")
    pt.add_argument("config", help="YAML config (its parallel.pp* keys pick the schedule)")
    pt.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    pt.add_argument("--png", required=True, help="write the timeline picture here")
    pt.add_argument(
        "--costs", default="1,1,1,0", help="forward,backward-input,backward-weight,comm"
    )
    pt.add_argument("--run", help="draw this run's measured pp_timeline.json instead")
    add_launch(sub)
    # deferred: each subcommand loads its own imports, so `plait --help` stays instant
    from plait.data.cli import add_parser as add_data

    add_data(sub)
    return ap


def _version() -> str:
    # deferred: each subcommand loads its own imports, so `plait --help` stays instant
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plait")
    except PackageNotFoundError:
        return "unknown (not installed)"


# ---- plait config: the key reference and the resolved config
def _config_parser(sub) -> None:
    c = sub.add_parser("config", help="every config key (type, default, help), a resolved config")
    cs = c.add_subparsers(dest="config_cmd", required=True)
    k = cs.add_parser("keys", help="every key with its type, default and help")
    k.add_argument("prefix", nargs="?", default="", help="only keys starting so, e.g. parallel.")
    s = cs.add_parser("show", help="the resolved config (file + overrides) as YAML")
    s.add_argument("config", help="YAML file, or a shipped config's name, e.g. gpt_tiny")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    cs.add_parser("list", help="the shipped configs, usable by name")


def _config(args: argparse.Namespace) -> int:
    # deferred: each subcommand loads its own imports, so `plait --help` stays instant
    from plait import config_reference as ref

    if args.config_cmd == "keys":
        print(ref.format_keys(args.prefix))
    elif args.config_cmd == "show":
        # deferred: each subcommand loads its own imports, so `plait --help` stays instant
        from plait.config import load_config

        print(ref.format_config(load_config(args.config, list(args.overrides))))
    else:
        # deferred: each subcommand loads its own imports, so `plait --help` stays instant
        from plait.bundled import CONFIG_DIR, bundled_configs

        print("\n".join(f"{n}    ({CONFIG_DIR / n}.yaml)" for n in bundled_configs()))
    return 0


# ---- plait plan
def _plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="memory per rank and step time of a layout, and a layout search"
    )
    p.add_argument("config", help="YAML config (its parallel.* keys are the layout to plan)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. parallel.tp=8")
    p.add_argument("--gpus", type=int, default=8, help="number of GPUs (world size)")
    p.add_argument(
        "--gpu", default="h100",
        help="device preset: a100, a100-40g, h100, h100-pcie, h200, b200, mi300x",
    )  # fmt: skip
    p.add_argument("--gpu-mem", help="device memory, overriding the preset (e.g. 80GiB)")
    p.add_argument("--nodes", type=int, help="nodes the GPUs are in (default: 8 GPUs per node)")
    p.add_argument(
        "--interconnect", default="ib", help="between nodes: nvlink, ib, ib-hdr, roce, ethernet"
    )
    p.add_argument("--peak-flops", help="dense bf16 FLOP/s per GPU, overriding the preset (989e12)")
    p.add_argument("--hbm-bw", help="HBM bytes/s per GPU, overriding the preset (3.35e12)")
    p.add_argument("--nvlink-bw", help="bytes/s per GPU and direction inside a node (450e9)")
    p.add_argument("--net-bw", help="bytes/s per GPU and direction between nodes (50e9)")
    p.add_argument(
        "--efficiency", type=float,
        help="one share of peak for all FLOPs instead of the roofline (matmul / attention / "
        "memory-bound ops)",
    )  # fmt: skip
    p.add_argument(
        "--mfu", type=float, help="measured end-to-end MFU: step time = FLOPs / (MFU x peak)"
    )
    p.add_argument(
        "--hfu", type=float,
        help="measured end-to-end HFU (recomputation counted): step time = HW FLOPs / (HFU x peak)",
    )  # fmt: skip
    p.add_argument(
        "--top", type=int, default=10, help="rows of the layout search table (0: no search)"
    )


def refuse_what_launch_refuses(cfg, layout) -> None:
    """What ``plait launch`` refuses before any process starts (plait.preflight.check_supported:
    engine x layout, experts, context parallel, pipeline cuts, tensor-parallel shapes, the
    engine's options), with launch's own message, so a plan never prices a refused layout; the
    engine's package need not be installed here."""
    from plait.mesh import ParallelDims  # deferred: it loads torch.distributed (start-up)
    from plait.preflight import check_supported

    check_supported(cfg, ParallelDims.from_config(cfg, layout.gpus), need_package=False)


def _plan(args: argparse.Namespace) -> int:
    # deferred (here and in main): what loads torch is imported by the subcommand that runs, so
    # plait --help and the parser stay instant (start-up)
    from plait.plan import Job, Layout, ModelShape, make_cluster, plan_memory, search, step_time
    from plait.plan.experts import experts_from_config
    from plait.plan.report import format_plan, format_table

    for flag, val in (("--efficiency", args.efficiency), ("--mfu", args.mfu), ("--hfu", args.hfu)):
        if val is not None and not 0 < val <= 1:
            raise ConfigError(f"{flag}: {val} is not allowed; must be in (0, 1], e.g. 0.4")
    cfg = load_config(args.config, list(args.overrides))
    cluster = make_cluster(
        args.gpu.lower(), args.gpus, interconnect=args.interconnect, nodes=args.nodes,
        gpu_mem=args.gpu_mem, peak_flops=args.peak_flops, hbm_bw=args.hbm_bw,
        net_bw=args.net_bw, nvlink_bw=args.nvlink_bw,
    )  # fmt: skip
    shape, job = ModelShape.from_config(cfg), Job.from_config(cfg)
    layout = Layout.from_config(cfg, cluster.gpus)
    refuse_what_launch_refuses(cfg, layout)
    mem = plan_memory(shape, layout, job, cluster.gpu.mem_bytes)
    t = step_time(
        shape, layout, job, cluster, efficiency=args.efficiency, mfu=args.mfu, hfu=args.hfu
    )
    print(format_plan(shape, layout, job, cluster, mem, t))
    experts = experts_from_config(cfg, layout, job)
    if experts is not None:
        print(f"\nmixture of experts (expert parallel ep={cfg.parallel.ep})")
        print("\n".join("  " + line for line in experts.lines()))
    if args.top > 0:
        cands, tried = search(shape, job, cluster, layout, efficiency=args.efficiency)
        print("\n" + format_table(cands, tried, args.top))
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"log.run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    if args.max_restarts < 0:
        raise PlaitError(f"--max-restarts: {args.max_restarts} is not allowed; must be >= 0")
    try:
        if args.nproc == 1 and args.max_restarts == 0:  # in this process: no launcher at all
            from plait.host_check import check_host  # deferred: torch (start-up, see _plan)
            from plait.trainer import train  # deferred: torch (start-up, see _plan)

            check_host(cfg, 1, 1)
            result = train(cfg)
        else:
            result = run_local(cfg, args.nproc, max_restarts=args.max_restarts)
    except preemption.Preempted as e:  # a signal stopped it after saving: rerun to resume
        print(f"plait: {e}", file=sys.stderr, flush=True)
        return preemption.EXIT_REQUEUE
    print(f"run folder: {result.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    # key=value overrides may also follow options (plait train C --nproc 2 train.steps=5)
    # an override without "=" is named by parse_overrides, not reported with every override
    options = [x for x in extra if x.startswith("-")]
    if extra and (options or not hasattr(args, "overrides")):
        ap.error(f"unrecognized arguments: {' '.join(options or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        if args.cmd == "plan":
            return _plan(args)
        if args.cmd == "train":
            return _train(args)
        if args.cmd == "config":
            return _config(args)
        if args.cmd == "compare":
            from plait.compare import format_table, plot  # deferred: torch (see _plan)

            if len(args.runs) < 2 or not 0 <= args.smooth < 1:
                raise PlaitError(
                    "plait compare: give two or more run folders and --smooth in [0, 1)"
                )
            print(format_table(args.runs))
            if args.png:
                plot(args.runs, args.png, metrics=args.metric, x=args.x, smooth=args.smooth)
                print(f"wrote {args.png}")
            return 0
        if args.cmd == "report":
            # deferred: each subcommand loads its own imports, so `plait --help` stays instant
            from plait.report import plot_report, summary

            print(summary(args.run))
            if args.png:
                plot_report(args.run, args.png)
                print(f"wrote {args.png}")
            return 0
        if args.cmd == "export":  # deferred imports: torch (see _plan), transformers
            # deferred: each subcommand loads its own imports, so `plait --help` stays instant
            from plait.checkpoint import consolidated, export_checkpoint

            if args.format == "hf":
                # deferred: each subcommand loads its own imports, so `plait --help` stays instant
                from plait.models.hf.export import export_hf

                _, model, step = consolidated(Path(args.checkpoint))
                export_hf(model, model.state_dict(), Path(args.out), repr(args.checkpoint))
            else:
                step = export_checkpoint(Path(args.checkpoint), Path(args.out))
            print(f"wrote {args.out} (weights after step {step})")
            return 0
        if args.cmd == "seed":
            from plait.checkpoint import write_seed_checkpoint  # deferred: torch (see _plan)

            n = write_seed_checkpoint(
                load_config(args.config, list(args.overrides)), Path(args.out)
            )
            print(f"wrote {args.out} ({n:,} parameters)")
            return 0
        if args.cmd == "pp-timeline":
            from plait.pipeline.cli import pp_timeline  # deferred: torch (see _plan)

            print(pp_timeline(args.config, args.overrides, args.png, args.costs, args.run))
            return 0
        if args.cmd == "data":
            # deferred: each subcommand loads its own imports, so `plait --help` stays instant
            from plait.data.cli import main as data_main

            return data_main(args)
        if args.cmd == "launch":
            return launch(args)
        if args.cmd == "info":
            from plait.info import format_info  # deferred: torch (see _plan)

            print(format_info())
            return 0
    except PlaitError as e:
        print(f"plait: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

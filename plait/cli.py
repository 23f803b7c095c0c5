"""The ``plait`` command. Subcommands import their heavy parts lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys

from plait.errors import PlaitError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="plait",
        description="Data, tensor and pipeline parallel training around one model interface.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train from a YAML config on this machine")
    t.add_argument("config", help="YAML config, e.g. configs/gpt_tiny.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=20")
    t.add_argument(
        "--nproc", type=int, default=1, help="local processes to start (gloo on CPU, nccl on GPU)"
    )
    t.add_argument("--run-dir", help="run folder (same as log.run_dir=...)")

    c = sub.add_parser("compare", help="two runs' loss curves side by side")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--png", help="also draw both curves to this PNG")

    sub.add_parser("info", help="versions, devices, backends, optional engines")
    from plait.launch.cli import add_parser as add_launch

    add_launch(sub)
    return ap


def _train(args: argparse.Namespace) -> int:
    from plait.config import load_config

    overrides = list(args.overrides) + ([f"log.run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    if args.nproc == 1:
        from plait.trainer import train

        result = train(cfg)
    else:
        from plait.launch import run_local

        result = run_local(cfg, args.nproc)
    print(f"run folder: {result.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "train":
            return _train(args)
        if args.cmd == "compare":
            from plait.compare import format_table, plot

            print(format_table(args.run_a, args.run_b))
            if args.png:
                plot(args.run_a, args.run_b, args.png)
                print(f"wrote {args.png}")
            return 0
        if args.cmd == "launch":
            from plait.launch.cli import main as launch

            return launch(args)
        if args.cmd == "info":
            from plait.info import format_info

            print(format_info())
            return 0
    except PlaitError as e:
        print(f"plait: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

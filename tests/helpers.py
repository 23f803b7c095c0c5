"""The one helper every multi-rank test uses: run a config on N real gloo processes (through
``plait train --nproc``'s own code path) in a child process with a hard timeout, and compare
against a single in-process run of the same config."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from plait.config import Config, load_config
from plait.trainer import RunResult, train

# one FSDP2 unit per block, as real models get (their blocks exceed parallel.fsdp_unit_mb): the
# tiny test models would otherwise fold every block into one unit and leave the per-block path
# (prefetch, reshard policies) untested; tests of the folded units set the key themselves
BASE = ["log.wandb=off", "log.tensorboard=false", "log.progress=off", "parallel.fsdp_unit_mb=0"]

# fp32 on gloo: DP/TP/PP change only the order of float reductions, so per-step losses agree to
# ~1e-7; docs/design.md's promise is relative 1e-5 per step.
RTOL = 1e-5


# seed_bigmodel (layers.1.fc.weight: 1e7 elements) with clipping active on every step (norm ~3
# against 0.5): fp32 norms of such a tensor depend on its sharding (tests/test_grad_norm.py)
BIG_CLIP = [
    "model.name=seed_bigmodel",
    "data.name=synthetic",
    "optim.name=adam",
    "optim.lr=1e-4",  # Adam moves every weight by ~lr: small, so final weights compare at 1e-5
    "train.steps=3",
    "train.grad_clip=0.5",
]


def make_config(overrides: list[str], run_dir: Path, config: str | None = None) -> Config:
    return load_config(config, [*BASE, f"log.run_dir={run_dir}", *overrides])


def run_single(overrides: list[str], run_dir: Path, config: str | None = None) -> RunResult:
    return train(make_config(overrides, run_dir, config), return_state=True)


def run_distributed(
    overrides: list[str],
    nproc: int,
    run_dir: Path,
    *,
    timeout: float = 180,
    config: str | None = None,
) -> RunResult:
    """Run on ``nproc`` processes; a hang becomes a failure after ``timeout`` seconds, with the
    whole process group (launcher and ranks) killed."""
    cfg = make_config(overrides, run_dir, config)
    out = run_dir / "result.pt"
    script = textwrap.dedent(f"""
        import torch
        from plait.config import from_dict
        from plait.launch import run_local
        if __name__ == "__main__":
            res = run_local(from_dict({cfg.to_dict()!r}), {nproc}, return_state=True)
            torch.save(res, {str(out)!r})
    """)
    return _run_script(script, nproc, out, timeout)


def run_distributed_many(
    configs: list[list[str]],
    nproc: int,
    run_dir: Path,
    *,
    timeout: float = 180,
    config: str | None = None,
    fail_rank: int | None = None,
) -> list[RunResult]:
    """Train several configs one after another in the SAME ``nproc`` ranks (one process
    start-up for all of them); returns rank 0's result of each, in order. ``fail_rank``: that
    rank raises at the start of step 2 (to test that a failure ends every rank)."""
    from plait.trainer import validate

    cfgs = [make_config(ov, run_dir / f"cfg{i}", config) for i, ov in enumerate(configs)]
    for c in cfgs:
        validate(c, nproc)  # as plait train does: a bad config never reaches the ranks
    dicts = [c.to_dict() for c in cfgs]
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "results.pt"
    script = textwrap.dedent(f"""
        import sys, uuid, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})  # spawned ranks import helpers
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch
        import helpers
        if __name__ == "__main__":
            lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node={nproc},
                run_id=uuid.uuid4().hex[:8], rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",
                max_restarts=0, monitor_interval=0.1, start_method="spawn")
            res = elastic_launch(lc, helpers.train_many)({dicts!r}, {fail_rank!r})
            torch.save(res[0], {str(out)!r})
    """)
    return _run_script(script, nproc, out, timeout)


def train_many(cfg_dicts: list[dict], fail_rank: int | None = None) -> list[RunResult]:
    """One rank of :func:`run_distributed_many`: :func:`train_configs`, with ``fail_rank``
    raising at the start of step 2 (to test that a failure ends every rank)."""
    from plait import dist as pdist
    from plait.trainer import _Step

    env = pdist.DistEnv.from_environ()
    if env.rank == fail_rank:
        run = _Step.run

        def failing(self, step):
            if step == 1:
                raise RuntimeError(f"injected failure on rank {env.rank}")
            return run(self, step)

        _Step.run = failing
    return train_configs(cfg_dicts)


def _run_script(script: str, nproc: int, out: Path, timeout: float):
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"{nproc}-process run hung for {timeout}s:\n{log[-4000:]}") from None
    assert proc.returncode == 0, f"{nproc}-process run failed ({proc.returncode}):\n{log[-4000:]}"
    return torch.load(out, weights_only=False)


def losses(res: RunResult) -> list[float]:
    return [m["loss"] for m in res.metrics]


def assert_same_run(ref: RunResult, got: RunResult, rtol: float = RTOL) -> None:
    """Per-step losses within ``rtol`` and final full weights close."""
    a, b = losses(ref), losses(got)
    assert len(a) == len(b), (a, b)
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    assert worst <= rtol, f"max relative loss difference {worst:.2e} > {rtol:.0e}\nref {a}\ngot {b}"
    assert ref.state.keys() == got.state.keys()
    for k in ref.state:
        torch.testing.assert_close(
            got.state[k], ref.state[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}"
        )


def assert_same_norms(ref: RunResult, got: RunResult, name: str) -> None:
    """Per-step global gradient norms within relative 1e-5; clipping active on every step."""
    a = [m["grad_norm"] for m in ref.metrics]
    b = [m["grad_norm"] for m in got.metrics]
    assert all(x > 0.5 for x in a), f"clipping must be active on every step: {a}"
    worst = max(abs(x - y) / x for x, y in zip(a, b))
    assert worst <= RTOL, f"{name}: grad norms differ by {worst:.1e}\nref {a}\ngot {b}"


def run_in_ranks(
    target: str, args: tuple, nproc: int, run_dir: Path, *, timeout: float = 180
) -> list:
    """Call ``module:function(*args)`` on ``nproc`` real gloo-capable processes (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT set; the function creates its own process group, or calls
    :func:`plait.trainer.train`, possibly several times) and return every rank's result, in
    rank order. Lets a test batch several configs into one launch (start-up costs ~10 s)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "ranks.pt"
    module, func = target.split(":")
    script = textwrap.dedent(f"""
        import os, sys, uuid
        import torch
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch
        from {module} import {func} as fn
        if __name__ == "__main__":
            lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node={nproc},
                              run_id=uuid.uuid4().hex[:8], rdzv_backend="c10d",
                              rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                              monitor_interval=0.1, start_method="spawn")
            res = elastic_launch(lc, fn)(*{args!r})
            torch.save([res[r] for r in sorted(res)], {str(out)!r})
    """)
    return _run_script(script, nproc, out, timeout)


def train_configs(cfg_dicts: list[dict]) -> list[RunResult]:
    """Rank function: train each config in turn in the same ranks.

    One process group serves all configs: re-creating it per config races (a fast rank can
    re-join the previous group's store before a slow rank has torn it down, then waits
    forever). ``train`` leaves a group it did not create up, so it is torn down here, once."""
    from plait import dist as pdist
    from plait.config import from_dict

    cfgs = [from_dict(d) for d in cfg_dicts]
    env = pdist.DistEnv.from_environ()
    device = pdist.pick_device(cfgs[0].train.device, env.local_rank)
    pdist.init_process_group(env, device, cfgs[0].parallel.timeout_s)  # no-op if already up
    try:
        return [train(c, return_state=True) for c in cfgs]
    finally:
        pdist.destroy_process_group()


def assert_same_run_and_eval(ref: RunResult, got: RunResult, name: str) -> None:
    """:func:`assert_same_run` plus the held-out metrics, failing with the layout's name."""
    try:
        assert_same_run(ref, got)
        for k, want in ref.final_eval.items():
            assert math.isclose(got.final_eval[k], want, rel_tol=1e-5), (k, got.final_eval)
    except AssertionError as e:
        raise AssertionError(f"{name}: {e}") from None


def step3_checkpoint(run_dir: Path, dst: Path) -> Path:
    """A checkpoint folder holding only the step-3 checkpoint of the run in ``run_dir`` (a fresh
    copy per consumer: a resumed run saves into its checkpoint folder)."""
    from plait.checkpoint import list_checkpoints

    src = run_dir / "checkpoints" / "step-00000003"
    assert src in list_checkpoints(run_dir / "checkpoints")
    shutil.copytree(src, dst / src.name)
    return dst


def assert_resumed(straight: RunResult, resumed: RunResult, what: str) -> None:
    """A run resumed from step 3 continues the straight run: steps 4.. within relative 1e-5,
    and the same final weights."""
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6], what
    for x, y in zip(losses(straight)[3:], losses(resumed)):
        assert abs(x - y) / x < 1e-5, (what, losses(straight), losses(resumed))
    for k, v in straight.state.items():
        torch.testing.assert_close(
            resumed.state[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{what} {k}: {m}"
        )


def eval_of(state: dict[str, torch.Tensor], overrides: list[str], run_dir: Path) -> dict:
    """One process's held-out metrics of the given full weights and buffers (e.g. a pipeline
    run's final state), for options whose training numbers depend on the layout."""
    from plait.trainer import _Step, validate

    cfg = make_config(overrides, run_dir)
    stepper = _Step(cfg, validate(cfg, 1), None, torch.device("cpu"), 0)
    stepper.model.load_state_dict(state)
    return stepper.evaluate()

"""The training loop: one importable function, so tests call it in-process and every launcher
reaches it through ``python -m plait.train``.

Loss normalisation: ``model.loss`` returns a *sum*; each micro-batch's sum is divided by the
global number of terms in the step (samples or tokens over all dp ranks and micro-batches) and
multiplied by dp, because the data-parallel engine averages gradients over dp ranks. The result
is the single-process gradient of the mean loss whatever the layout or accumulation. Under
context parallel each rank holds a part of every sequence: sums and counts run over dp x cp and
gradients are averaged over dp x cp, so "dp" above reads "dp x cp".
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from plait import dist as pdist
from plait import preemption, resume, run_lock
from plait.config import Config
from plait.context_parallel import shard_batch
from plait.data import build_data
from plait.data.prefetch import Prefetcher
from plait.ddp import build_engine
from plait.errors import PlaitError
from plait.layout_notes import layout_note
from plait.mesh import ParallelDims
from plait.metrics import MetricsWriter, peak_mem_bytes
from plait.models import build_model, param_count
from plait.observe.clock import StepClock
from plait.observe.live_bytes import StepPeaks
from plait.observe.observer import Observer
from plait.optim import build_scheduler
from plait.parallelize import parallelize
from plait.preflight import default_run_dir, validate
from plait.wrapped import unwrap

__all__ = ["RunResult", "default_run_dir", "train", "validate", "write_run_info"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None  # full weights, when asked for (tests)
    preempted: str | None = None  # stopped by a signal: the one line saying so (plait.preemption)


class _Step:
    """Everything one rank needs to run steps: built once by :func:`train`."""

    def __init__(self, cfg: Config, dims: ParallelDims, mesh, device: torch.device, dp_rank: int):
        self.cfg, self.dims, self.device = cfg, dims, device
        # the group the loss, token counts and gradients are summed over: dp x cp
        sums = (mesh.dp_cp if dims.cp > 1 else mesh.dp) if mesh is not None else None
        self.dp_group = sums.get_group() if sums is not None and dims.dp_cp > 1 else None
        # the stop vote (see _stop_signal) rides on the loss all-reduce when that spans every rank
        self.votes = self.dp_group is not None and dims.dp_cp == dist.get_world_size()
        self.stop = 0  # the signal the step's vote agreed on (0: none), when self.votes
        # context parallel: this rank's 2 of 2 x cp sequence chunks (plait.context_parallel)
        self.cp_rank = mesh.root["cp"].get_local_rank() if dims.cp > 1 else 0
        model = parallelize(build_model(cfg), cfg, dims, mesh, device)
        if cfg.checkpoint.init_from:  # seed weights: before DeepSpeed copies them into its
            # optimizer's flat fp32 partitions (loaded after, they would be overwritten)
            from plait.checkpoint import load_safetensors  # deferred: see _setup_checkpoints

            load_safetensors(model, Path(cfg.checkpoint.init_from))
        if dims.pp > 1:
            # deferred: torch.distributed.pipelining only when pp > 1 (start-up)
            from plait.pipeline.step import PipelineEngine

            self.engine = PipelineEngine(model, cfg, dims, mesh, device)
        else:
            # the data-parallel engine: makes the optimizer, wraps what needs both (DeepSpeed,
            # fairscale)
            self.engine = build_engine(model, cfg, dims, mesh, device)
        # forward/backward, evaluation and the optimizer step (the fp16 loss scaler included)
        # go through the engine's one surface (plait.ddp.engine): the loop never branches on it
        self.engine.set_device(device)
        self.model, self.inner = self.engine.model, unwrap(self.engine.model)
        self.data = build_data(cfg, self.inner)
        self.optimizer = self.engine.lr_optimizer
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.local_batch = cfg.train.global_batch // dims.dp
        self.nan_streak = 0  # non-finite steps in a row (train.on_nan=skip)
        self.clock = StepClock(device)  # data / wait / fwd_bwd / optim split of each step
        self.lo = dp_rank * self.local_batch
        # the next step's slice is read (and on CUDA copied) while this step runs
        self.loader = Prefetcher(
            self.data, self.lo, self.lo + self.local_batch, cfg.train.global_batch, device,
            enabled=cfg.data.prefetch, steps=cfg.train.steps,
        )  # fmt: skip

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.dp_group is not None:
            dist.all_reduce(t, group=self.dp_group)
        return t

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def run(self, step: int) -> dict[str, float]:
        """One optimizer step on the global batch of ``step``; returns its metrics."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.clock.start()
        self.model.train()
        batch, data_wait = self.loader.get(step)
        batch = shard_batch(batch, self.cp_rank, self.dims.cp)
        self.clock.mark("data_s")
        micro = [
            dict(zip(batch, vals))
            for vals in zip(*(v.chunk(cfg.train.grad_accum) for v in batch.values()))
        ]
        count = self._all_reduce(
            torch.tensor(float(sum(self.inner.count(m) for m in micro)), device=self.device)
        )
        self.clock.mark("wait_s")  # the step's first collective: early ranks wait here
        scale = self.dims.dp_cp / count  # see the module docstring
        loss_sum = self.engine.forward_backward([self._to_device(m) for m in micro], scale)
        if self.votes:  # one all-reduce for the loss and the stop vote
            loss_sum, self.stop = _with_vote(loss_sum, self.dp_group)
        else:
            loss_sum = self._all_reduce(loss_sum)
        loss_val = (loss_sum / count).item()
        self.clock.mark("fwd_bwd_s")

        max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
        lr = self.scheduler.get_last_lr()[0]  # the lr this step used
        out = self.engine.optimizer_step(max_norm, math.isfinite(loss_val))
        grad_norm, finite = out.grad_norm, out.finite
        # skipped updates: an fp16 overflow is the scaler's to handle, anything else on_nan's
        if not finite and not out.overflow and cfg.train.on_nan == "stop":
            raise PlaitError(
                f"loss is {loss_val} (grad norm {grad_norm}) at step {step + 1}; lower optim.lr, "
                "set train.grad_clip, or pass train.on_nan=skip to skip such steps"
            )
        # skipping is for a rare bad batch; a run that stays non-finite only burns the budget
        # (a loss scaler's own overflow skips are left to the scaler, which shrinks its scale)
        self.nan_streak = 0 if finite or out.overflow else self.nan_streak + 1
        if self.nan_streak > cfg.train.max_nan_skips:
            raise PlaitError(
                f"loss is {loss_val} (grad norm {grad_norm}) for {self.nan_streak} steps in a row "
                f"up to step {step + 1}, past train.max_nan_skips={cfg.train.max_nan_skips}; "
                "lower optim.lr or set train.grad_clip"
            )
        self.scheduler.step()
        logged = step == 0 or (step + 1) % cfg.log.every == 0 or step + 1 == cfg.train.steps
        # after the step, before zero_grad: all state alive; on logged steps only (a collective)
        held = self.engine.held_bytes() if logged else None
        self.engine.zero_grad()
        self.clock.mark("optim_s")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        rec = {
            "step": step + 1,
            "loss": loss_val,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_time_s": dt,
            "data_wait_s": data_wait,
        }
        rec["tokens" if self.inner.task == "lm" else "samples"] = float(count)
        rec.update(self.clock.read())  # rates: over the log interval (plait.observe.window)
        rec["peak_mem_bytes"] = peak_mem_bytes(self.device)
        if held is not None:
            rec.update(self._memory_record(held))
        if not finite:
            rec["skipped"] = True
        return rec

    def _memory_record(self, held: dict[str, int]) -> dict[str, int]:
        """Bytes of params / grads / optimizer state this rank holds (``mem_*``) and the most
        any dp rank holds (``mem_*_max``); see plait.ddp.memory for the ZeRO formulas."""
        names = sorted(held)
        mine = torch.tensor([float(held[k]) for k in names], dtype=torch.float64)
        top = mine.clone()
        if self.dp_group is not None:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.dp_group)
        rec = {f"mem_{k}_bytes": int(v) for k, v in zip(names, mine.tolist())}
        rec.update({f"mem_{k}_bytes_max": int(v) for k, v in zip(names, top.tolist())})
        return rec

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss (and accuracy for classifiers) on held-out data: one full pass of a finite
        split, else ``train.eval_batches`` global batches."""
        if "eval" not in self.data.splits:
            return {}
        self.model.eval()
        B = self.cfg.train.global_batch
        totals = torch.zeros(3, device=self.device)  # loss sum, correct, count
        for k in range(self.data.eval_steps(B, self.cfg.train.eval_batches)):
            mb = self.data.sample("eval", k, self.lo, self.lo + self.local_batch, B)
            mb = self._to_device(shard_batch(mb, self.cp_rank, self.dims.cp))
            totals += self.engine.eval_batch(mb)
        loss_sum, correct, n = self._all_reduce(totals).tolist()
        res = {"eval_loss": loss_sum / n}
        if self.inner.task == "classification":
            res["eval_accuracy"] = correct / n
        return res

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights on CPU under single-process names, for comparisons."""
        return self.engine.full_state()


def _setup_checkpoints(
    cfg: Config, run_dir: Path, env: pdist.DistEnv, dims: ParallelDims, stepper: _Step
):
    """Auto-resume from the newest complete checkpoint; returns (checkpointer or None, first
    step to run)."""
    c = cfg.checkpoint
    # a run without checkpoints still resumes from the one a signalled stop saved there
    if not (c.every or c.dir or (run_dir / "checkpoints").is_dir()):
        return None, 0
    from plait import checkpoint as ck  # deferred: see _checkpointer

    ckpt = _checkpointer(cfg, run_dir, env, dims)
    start = 0
    latest = ckpt.latest() if c.resume == "auto" else None
    if latest is None:
        return ckpt, start
    changes = _check_resume_config(cfg, latest, env.rank == 0)
    start = ck.load(latest, stepper.model, stepper.optimizer)
    # the lr is a pure function of (config, step): the new config's schedule from the first
    # resumed step, whatever the checkpoint's run used
    stepper.scheduler = build_scheduler(stepper.optimizer, cfg.optim, cfg.train.steps, start)
    if env.rank == 0:
        print(f"resumed from {latest} (step {start})", flush=True)
        if changes is not None and changes.schedule:
            lr = stepper.scheduler.get_last_lr()[0]
            print(
                f"lr schedule changed on resume: {resume.describe(changes.schedule)}; steps "
                f"{start + 1}.. follow the new schedule (lr {lr:.3g} at step {start + 1})",
                flush=True,
            )
    return ckpt, start


def _checkpointer(cfg: Config, run_dir: Path, env: pdist.DistEnv, dims: ParallelDims):
    # deferred: torch.distributed.checkpoint loads torch.distributed.tensor and sympy (seconds),
    # which runs without checkpoints never need (start-up)
    from plait import checkpoint as ck

    c = cfg.checkpoint
    return ck.Checkpointer(
        Path(c.dir) if c.dir else run_dir / "checkpoints",
        every=c.every,
        keep=c.keep,
        async_save=c.async_save,
        layout={"world_size": env.world_size, **dims.layout()},
        config=cfg.to_dict(),
    )


def _with_vote(loss_sum: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """All-reduce the loss sum together with each rank's stop vote: one slot per signal of
    :data:`plait.preemption.SIGNALS`, 1 where this rank received it. Returns the summed loss and
    the signal every rank agrees on: the largest received by any rank (the MAX of
    :func:`_stop_signal`), 0 for none. Saves the separate all-reduce on data-parallel layouts."""
    got = preemption.received()
    votes = [float(got == s) for s in preemption.SIGNALS]
    t = torch.tensor([0.0, *votes], device=loss_sum.device, dtype=loss_sum.dtype)
    t[0] = loss_sum
    dist.all_reduce(t, group=group)
    seen = [int(s) for s, n in zip(preemption.SIGNALS, t[1:].tolist()) if n > 0]
    return t[0], max(seen, default=0)


def _stop_signal(env: pdist.DistEnv, device: torch.device, stepper: _Step | None = None) -> int:
    """The signal any rank received (0: none), the same on every rank: one number all-reduced
    at each step boundary, so all ranks stop after the same step (plait.preemption). Where the
    loss all-reduce spans every rank the vote rode on it (:func:`_with_vote`): a signal that
    arrives after it is seen at the next step."""
    if stepper is not None and stepper.votes:
        return stepper.stop
    got = preemption.received()
    if env.world_size == 1:
        return got
    t = torch.tensor([got], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _save_for_stop(cfg, run_dir, env, dims, stepper, ckpt, done: int, signum: int):
    """The checkpoint of a signalled stop (unless the periodic one just saved this step)."""
    ckpt = ckpt or _checkpointer(cfg, run_dir, env, dims)
    if not (ckpt.every and done % ckpt.every == 0):
        ckpt.save(done, stepper.model, stepper.optimizer, final=True)  # synchronous
    ckpt.wait()
    path = str(ckpt.root / f"step-{done:08d}")
    return preemption.Preempted(done, preemption.signame(signum), path)


def _check_resume_config(cfg: Config, latest: Path, warn: bool):
    """Compare the checkpoint's stored config with this run's (plait.resume): refuse a change to
    the numbers unless allowed, warn about an allowed one. None: the manifest stored none."""
    old = resume.stored_config(latest)
    if old is None:
        return None
    changes = resume.check(latest, old, cfg.to_dict())
    if changes.numbers and warn:
        warnings.warn(
            f"resuming {latest} with a changed config (checkpoint.allow_config_change=true): "
            f"{resume.describe(changes.numbers)}",
            stacklevel=2,
        )
    return changes


def write_run_info(
    run_dir: Path, env: pdist.DistEnv, dims: ParallelDims, device: torch.device, stepper: _Step,
    params: int, extra: dict,
) -> None:  # fmt: skip
    """run.json: who ran this and how, so runs from different launchers can be told apart.
    ``params``: the whole model's (a pipeline rank holds only its stages)."""
    info = {
        "world_size": env.world_size, "launched_by": env.source, "device": str(device),
        "layout": dims.layout(),
        "params": params, "data": stepper.data.describe(),
        "torch": torch.__version__, "started": datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    info.update(extra)
    (run_dir / "run.json").write_text(json.dumps(info, indent=1) + "\n")


def train(cfg: Config, *, return_state: bool = False) -> RunResult:
    """Run the configured job on this process (single process, or one rank of a launched job)."""
    env = pdist.DistEnv.from_environ()
    dims = validate(cfg, env.world_size)
    device = pdist.pick_device(cfg.train.device, env.local_rank)
    pdist.set_cpu_threads(env, device)
    pdist.keep_cpu_heap(device)
    owns_group = not dist.is_initialized()  # a caller's group (tests batching runs) stays up
    # from here a signal only asks the run to stop after the step in flight (_run)
    handlers = preemption.install()
    try:
        pdist.init_process_group(env, device, cfg.parallel.timeout_s)
        return _train(cfg, env, dims, device, return_state)
    finally:
        preemption.restore(handlers)
        if owns_group:
            pdist.destroy_process_group()


def _train(
    cfg: Config, env: pdist.DistEnv, dims: ParallelDims, device: torch.device, return_state: bool
) -> RunResult:
    run_dir = Path(pdist.broadcast_object(str(default_run_dir(cfg))))
    lock, refused = None, None
    if env.rank == 0 and not run_lock.held_by_parent(run_dir):
        try:
            lock = run_lock.acquire(run_dir)
        except PlaitError as e:
            refused = str(e)
    refused = pdist.broadcast_object(refused)  # every rank ends with rank 0's one line
    if refused:
        raise PlaitError(refused)
    try:
        return _run(cfg, env, dims, device, return_state, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _run(
    cfg: Config,
    env: pdist.DistEnv,
    dims: ParallelDims,
    device: torch.device,
    return_state: bool,
    run_dir: Path,
) -> RunResult:
    mesh = dims.build_mesh(device.type) if env.world_size > 1 else None
    dp_rank = mesh.dp.get_local_rank() if mesh is not None else 0
    # Dropout draws from this stream: seeded per dp rank, so replicas do not share masks.
    torch.manual_seed(cfg.train.seed * 1_000_003 + dp_rank)
    # log.live_bytes: recording starts before the model is built, so its states are counted
    live = StepPeaks(cfg.log.live_bytes and device.type == "cpu")
    try:
        stepper = _Step(cfg, dims, mesh, device, dp_rank)
    except BaseException:
        live.stop()
        raise
    result = RunResult(run_dir=run_dir)
    ckpt, start = _setup_checkpoints(cfg, run_dir, env, dims, stepper)
    writer = MetricsWriter(
        cfg, run_dir, enabled=env.rank == 0, total_steps=cfg.train.steps, start_step=start
    )
    params = param_count(build_model(cfg))  # on meta: the whole model, whatever this rank holds
    obs = Observer(
        cfg, dims, rank=env.rank, world=env.world_size, device=device, run_dir=run_dir,
        task=stepper.inner.task, params=params, engine=stepper.engine,
        start_step=start,
    )  # fmt: skip
    if env.rank == 0:
        write_run_info(run_dir, env, dims, device, stepper, params, obs.run_info())
        if note := layout_note(cfg, dims):
            print(note, flush=True)
    stopped: preemption.Preempted | None = None
    if env.rank == 0:
        preemption.clear_marker(run_dir)
    try:
        for step in range(start, cfg.train.steps):
            obs.before_step(step + 1)
            try:
                live.begin()
                rec = stepper.run(step)
                if (peak := live.end()) is not None:
                    rec["mem_live_peak_bytes"] = peak
            except PlaitError:
                raise
            except Exception as e:  # name the rank and the step; the launcher ends the others
                obs.on_error(e)
                raise RuntimeError(
                    f"rank {env.rank} failed at step {step + 1}: {type(e).__name__}: {e}"
                ) from e
            done = step + 1
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.steps:
                rec.update(stepper.evaluate())
            if done == cfg.train.steps:
                result.final_eval = stepper.evaluate()
                rec.update(result.final_eval)
            obs.after_step(rec, done)  # interval rates, MFU, memory, stragglers on logged steps
            result.metrics.append(rec)
            if obs.logged(done):
                writer.log(rec)
            if ckpt is not None:
                ckpt.maybe_save(done, cfg.train.steps, stepper.model, stepper.optimizer)
            if done < cfg.train.steps and (sig := _stop_signal(env, device, stepper)):
                stopped = _save_for_stop(cfg, run_dir, env, dims, stepper, ckpt, done, sig)
                break
        if ckpt is not None:
            ckpt.wait()
    finally:
        live.stop()
        obs.close()
        stepper.loader.close()
        writer.close()
    if stopped is not None:  # after the metrics are on disk: the marker says the stop is complete
        if env.rank == 0:
            preemption.write_marker(run_dir, stopped.step, sig, stopped.checkpoint)
        raise stopped
    stepper.engine.finish(run_dir, write=env.rank == 0)
    if return_state:
        result.state = stepper.full_state()
    return result

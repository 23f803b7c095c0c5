"""The engine of a pipeline rank (``parallel.pp > 1``): the trainer drives it through the same
surface as the data-parallel engines (plait.ddp.engine); forward/backward runs the schedule,
evaluation a plain forward along the stages, clipping and the full state span the pipeline.

Loss: each microbatch's summed loss is multiplied by ``dp / global_count`` inside the
schedule's ``loss_fn`` and torch's gradient scaling is off (``scale_grads=False``), so the
summed gradients equal the single-process gradient of the mean loss (see plait.trainer).

Data parallel across pipeline replicas:

- zero_stage 2/3: each stage is FSDP2-wrapped (plait.parallelize); torch's ``PipelineStage``
  holds gradient reduce-scatter back until the last microbatch's backward (torchtitan's 3-D).
- zero_stage 0: gradients are averaged over the dp group by one flattened all-reduce after the
  schedule, written by hand because DDP's reducer assumes one forward per backward through
  ``DDP.forward`` and gradients accumulated by autograd, while the schedules run many forwards
  before their backwards and the zero-bubble ones compute weight gradients outside autograd's
  accumulation.

Tensor parallel inside stages: parameters are DTensors on the tp (or dp x tp) mesh; the stage
boundary carries the plain local residual stream ((B, T/tp, D) under sequence parallel), and the
last stage's vocabulary-sharded logits meet the loss inside ``loss_parallel``, which stays
entered for the whole schedule so the loss's backward runs under it too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle
from torch.distributed.tensor import DTensor

from plait.config import Config
from plait.ddp import uses_fsdp
from plait.ddp.engine import Engine
from plait.grad_norm import clip_grad_norm
from plait.mesh import Meshes, ParallelDims
from plait.models.base import canonical_name
from plait.parallel_attrs import EXPERT_SHARD_ATTR
from plait.pipeline.p2p import recv_tensor, send_tensor
from plait.pipeline.schedules import schedule_class
from plait.pipeline.simulate import write_measured
from plait.pipeline.split import PipelineParts, stage_rank
from plait.pipeline.timeline import instrument
from plait.tensor_parallel import loss_context, plain


class PipelineEngine(Engine):
    """The torch optimizer over this rank's stages (gradients averaged over dp here, not by
    DDP), the schedule built on the first step."""

    def __init__(self, parts: PipelineParts, cfg: Config, dims: ParallelDims, mesh: Meshes, device):
        p = cfg.parallel
        # gradients are averaged over dp x cp (context-parallel ranks hold the same weights)
        self.parts, self.inner, self.dp = parts, parts[0], dims.dp_cp
        self.pp_group = mesh.root["pp"].get_group()
        # FSDP2 reduces gradients itself; otherwise plait averages them over dp (see above)
        grads_mesh = mesh.dp_cp if dims.cp > 1 else mesh.dp
        self.dp_group = grads_mesh.get_group() if self.dp > 1 and not uses_fsdp(cfg, dims) else None
        S = parts.n_stages
        self.first, self.last = 0 in parts.stage_ids, S - 1 in parts.stage_ids
        # the part that computes the loss: the last stage's (its logits may be tp-sharded)
        self.head = parts[parts.stage_ids.index(S - 1)] if self.last else parts[0]
        self.last_rank = stage_rank(p.pp_schedule, S - 1, dims.pp)  # rank in the pp group
        self.schedule_name, self.pp, self.n_stages = p.pp_schedule, dims.pp, S
        self.v, self.m = p.pp_virtual_stages, p.pp_microbatches
        self.pp_rank = mesh.root["pp"].get_local_rank()
        self.cfg, self.stages, self.schedule = cfg, [], None  # built on the first step
        self.scale = 1.0
        self.device = device
        self.events: list | None = None
        self.steps_run, self.total_steps = 0, cfg.train.steps
        self.record_last = cfg.log.pp_timeline
        super().__init__(parts, parts[0], cfg, dims.dp)

    def _build(self, chunk_input: torch.Tensor) -> None:
        """Stages and schedule, each stage given example input and output tensors.

        Without them torch 2.13 infers a stage's metadata by running it once more in training
        mode, on the first micro-batch (first stage) or on uninitialised ``torch.empty``
        placeholders (later stages): BatchNorm folded that into its running statistics
        (``num_batches_tracked`` one too many, garbage growing to inf/NaN) and dropout drew an
        extra mask. Here the boundaries are measured by one evaluation-mode, no-grad pass of the
        first micro-batch along the stages, which changes no statistics, draws no random numbers
        and gives the exact shapes and dtypes under any model, tp / sequence parallel ((B, T/tp,
        D) boundaries) and autocast (a meta-device forward knows no autocast dtype)."""

        micro = chunk_input.tensor_split(self.m)[0]  # torch's own split of the chunk
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        training = self.parts.training
        self.parts.eval()
        with torch.no_grad():
            self._chain(micro, seen)
        self.parts.train(training)

        def example(t: torch.Tensor, grad: bool) -> torch.Tensor:  # metadata only: meta device
            meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
            return meta.requires_grad_(grad and t.is_floating_point())

        for sid, mod in zip(self.parts.stage_ids, self.parts):
            x, y = seen[sid]
            ex_in, ex_out = example(x, sid > 0), example(y, True)
            stage = PipelineStage(mod, sid, self.n_stages, self.device, ex_in, ex_out,
                                  group=self.pp_group)  # fmt: skip
            self.stages.append(stage)
        cls = schedule_class(self.schedule_name)
        single = issubclass(cls, PipelineScheduleSingle)
        self.schedule = cls(
            self.stages[0] if single else self.stages,
            self.m,
            loss_fn=self._loss_fn,
            scale_grads=False,
        )

    def record(self) -> list:
        """Time every stage action from now on (for the measured timeline)."""
        self.events = []
        rank = dist.get_rank(self.pp_group)
        for st in self.stages:
            instrument(st, rank, self.events)
        return self.events

    def finish(self, run_dir, *, write: bool) -> None:
        """With ``log.pp_timeline``: gather the recorded actions of all pipeline ranks (same
        host: one monotonic clock) and, on the writing rank, save them with the simulated bubble
        for the measured costs."""
        if not self.record_last:
            return
        pieces: list = [None] * self.pp
        dist.all_gather_object(pieces, self.events or [], group=self.pp_group)
        if write:
            events = [e for piece in pieces for e in piece]
            write_measured(events, run_dir, self.schedule_name, self.pp, self.v, self.m)

    def _loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # torch also calls this on placeholder tensors to infer gradient shapes, so the step's
        # losses are read from step()'s ``losses`` list, not accumulated here.
        return plain(self.head.loss(output, {"target": target})) * self.scale

    def forward_backward(self, micro: list[dict[str, torch.Tensor]], scale) -> torch.Tensor:
        """Run the schedule on each accumulation chunk; returns this dp rank's summed (unscaled)
        loss on every pipeline rank. Gradients are left averaged over dp."""
        with self.autocast():
            return self._forward_backward(micro, scale)

    def _forward_backward(self, micro: list[dict[str, torch.Tensor]], scale) -> torch.Tensor:
        self.scale, self.steps_run = scale, self.steps_run + 1
        self.set_loss_scale(scale)
        if self.schedule is None:
            self._build(micro[0]["input"])
        if self.record_last and self.steps_run == self.total_steps:
            self.record()  # the last step: warm, so its times are representative
        loss_sum = torch.zeros((), device=self.device)
        for mb in micro:
            args = (mb["input"],) if self.first else ()
            losses: list[torch.Tensor] = []
            target = mb["target"] if self.last else None
            with loss_context(self.head):
                self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
            if self.last:
                loss_sum += sum(loss.detach().float() for loss in losses) / scale
        self._average_grads()
        return self._from_last(loss_sum)

    @torch.no_grad()
    def eval_batch(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """(loss sum, correct, count) of one batch, on every rank."""
        with self.autocast():
            return self._eval_batch(mb)

    def _eval_batch(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        acc = torch.zeros(2, device=self.device)
        h = self._chain(mb["input"])
        if h is not None:  # this rank holds the last stage
            part = self.head
            with loss_context(part):
                acc[0] = plain(part.loss(h, mb)).float()
            if part.task == "classification":  # lm logits may be vocabulary-sharded
                acc[1] = (h.argmax(-1) == mb["target"]).sum()
        out = self._from_last(acc)
        return torch.cat([out, out.new_tensor([float(self.inner.count(mb))])])

    def _chain(self, x: torch.Tensor, seen: dict | None = None) -> torch.Tensor | None:
        """A plain forward along the stages, hand to hand (point-to-point between ranks), by
        hand because torch 2.13's ``schedule.eval()`` still runs the backward actions of V
        schedules and fails there; evaluation has no bubble worth scheduling. Returns the last
        stage's output on the rank holding it, else None; ``seen``: each local stage's
        (input, output)."""
        h, last = None, self.n_stages - 1
        for s in range(self.n_stages):
            owner = stage_rank(self.schedule_name, s, self.pp)
            nxt = stage_rank(self.schedule_name, s + 1, self.pp) if s < last else None
            if owner == self.pp_rank:
                inp = x if s == 0 else h
                h = self.parts[self.parts.stage_ids.index(s)](inp)
                if seen is not None:
                    seen[s] = (inp, h)
                if s == last:
                    return h
                if nxt != owner:
                    send_tensor(h, nxt, self.pp_group)
            elif nxt == self.pp_rank:
                h = recv_tensor(owner, self.pp_group, self.device)
        return None

    def _from_last(self, t: torch.Tensor) -> torch.Tensor:
        dist.broadcast(t, group=self.pp_group, group_src=self.last_rank)
        return t

    def model_parts(self) -> list:
        return list(self.parts)

    def _average_grads(self) -> None:
        if self.dp_group is None:
            return
        # expert weights split over ep/tp ranks reduce over their own group (MoE.finish_step)
        grads = [
            p.grad
            for p in self.parts.parameters()
            if p.grad is not None and not hasattr(p, EXPERT_SHARD_ATTR)
        ]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.dp_group)
        flat /= self.dp
        for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(avg)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global 2-norm over all stages: each stage's float64 norm (over its FSDP / TP shards)
        squared and summed over the pp group."""
        return clip_grad_norm(self.parts.parameters(), max_norm, [self.pp_group], self.device)

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every stage's weights gathered onto every rank, under single-process names."""
        local = {}
        for part in self.parts:
            for k, v in part.state_dict().items():
                if isinstance(v, DTensor):  # FSDP / TP shards: gathered over dp and tp
                    v = v.full_tensor()
                local[canonical_name(k)] = v.detach().cpu().clone()
        pieces: list = [None] * dist.get_world_size(self.pp_group)
        dist.all_gather_object(pieces, local, group=self.pp_group)
        return {k: v for piece in pieces for k, v in piece.items()}

"""ZeRO-1 and ZeRO-2 on flat buffers, laid out the way DeepSpeed's ZeRO optimizer lays them out
(``parallel.zero_flat``, docs/design.md "Flat ZeRO-1/2").

Parameters stay replicated, but as views into one flat fp32 buffer cut into buckets of about
``parallel.zero_bucket_mb`` (parameters walked in reverse, the order backward produces their
gradients; a bucket holds one optimizer param group, padded to a multiple of the dp size N).
Each bucket is split into N equal pieces; this rank owns piece ``rank`` of every bucket:

- backward: a post-accumulate-grad hook per parameter; when a bucket's gradients are all in,
  they are copied into a staging buffer, ``.grad`` is freed and one reduce-scatter for the
  bucket starts (async, so it overlaps the rest of backward) into this rank's gradient piece:
  full gradients exist only for the buckets in flight (at most two). ZeRO-2 does this after
  every micro-batch (``parallel.reduce_every_microbatch``), so gradients stay sharded while
  accumulating; ZeRO-1 keeps whole gradients across the micro-batches and reduces once, in the
  last one. After the reduction both keep only this rank's piece, as DeepSpeed's stage 1 and 2
  both do (it all-reduces at stage 1; a reduce-scatter moves half the bytes for the same piece).
- step: the global norm from the pieces (one all-reduce), clipping, then the optimizer on this
  rank's pieces only: a handful of flat tensors instead of one per parameter (the per-tensor
  loop was most of FSDP2's step overhead on small models); then each bucket's parameters are
  all-gathered in place from the pieces, straight into the buffer the parameters view.

Held per rank for fp32 Adam after the step: 4Ψ parameters + 4Ψ/N gradient pieces + 8Ψ/N
optimizer state (ZeRO-2's 4Ψ + 12Ψ/N, and no unsharded copy of the parameters as
FSDP2-no-reshard keeps); ZeRO-1 also holds 4Ψ of whole gradients while accumulating. Written by hand because torch has no replicated-parameter,
sharded-gradient engine (FSDP2 always shards parameters; ZeroRedundancyOptimizer shards whole
parameters and keeps DDP's full gradients).

The optimizer must be elementwise (Adam, AdamW, SGD: plait's own); its state per piece is
gathered into single-process per-parameter tensors for checkpoints (:meth:`FlatZero.full_state`),
so a checkpoint loads under any layout and any checkpoint loads here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from plait.ddp import memory
from plait.ddp.engine import Engine
from plait.ddp.gloo_collectives import broadcast_slots
from plait.ddp.zero1 import optimizer_recipe
from plait.grad_norm import clip_, total_norm
from plait.optim import param_groups


class Bucket:
    """A contiguous run of parameters (one optimizer param group) in the flat buffer."""

    def __init__(self, params: list[nn.Parameter], start: int, n: int, group_index: int):
        self.params, self.group_index = params, group_index
        self.offsets, off = [], 0
        for p in params:
            self.offsets.append(off)
            off += p.numel()
        self.used = off
        self.size = -(-off // n) * n  # padded so N ranks get equal pieces
        self.start, self.piece_size = start, self.size // n
        self.ready: set[int] = set()
        self.staging: torch.Tensor | None = None  # ZeRO-2: full gradients while in flight
        self.work = None
        self.out: torch.Tensor | None = None  # ZeRO-2: the reduce-scatter's output


class FlatZero:
    """Flat parameter buffer, gradient hooks and collectives of one model (module docstring)."""

    def __init__(self, model: nn.Module, group, bucket_bytes: int, weight_decay):
        self.group = group
        self.n, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.gloo = dist.get_backend(group) == "gloo"
        self.sync = True  # reduce in this backward (the trainer's micro-batch flag)
        self.groups = param_groups(model, weight_decay)
        self.buckets: list[Bucket] = []
        start = 0
        for gi, g in enumerate(self.groups):
            run, nbytes = [], 0
            for p in reversed(g["params"]):  # backward's order
                run.append(p)
                nbytes += p.numel() * p.element_size()
                if nbytes >= bucket_bytes:
                    self.buckets.append(Bucket(run, start, self.n, gi))
                    start += self.buckets[-1].size
                    run, nbytes = [], 0
            if run:
                self.buckets.append(Bucket(run, start, self.n, gi))
                start += self.buckets[-1].size
        p0 = self.groups[0]["params"][0]
        self.flat = torch.zeros(start, dtype=p0.dtype, device=p0.device)
        self.where: dict[nn.Parameter, tuple[Bucket, int]] = {}
        with torch.no_grad():
            for b in self.buckets:
                for p, off in zip(b.params, b.offsets):
                    view = self.flat[b.start + off : b.start + off + p.numel()].view_as(p)
                    view.copy_(p)
                    p.data = view
                    self.where[p] = (b, off)
        # every rank starts from rank 0's values (as DDP does at construction)
        dist.broadcast(self.flat, src=dist.get_global_rank(group, 0), group=group)
        self.pieces = [self._piece(self.flat, b) for b in self.buckets]
        self._next = 0  # buckets are reduced in this fixed order on every rank
        self._inflight: list[Bucket] = []
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.where]

    def _piece(self, buf: torch.Tensor, b: Bucket) -> torch.Tensor:
        lo = b.start + self.rank * b.piece_size
        return buf[lo : lo + b.piece_size]

    def optimizer_groups(self) -> list[dict]:
        """The model's param groups with this rank's pieces in place of the parameters."""
        out = []
        for gi, g in enumerate(self.groups):
            pieces = [pc for b, pc in zip(self.buckets, self.pieces) if b.group_index == gi]
            out.append({**{k: v for k, v in g.items() if k != "params"}, "params": pieces})
        return out

    # ------------------------------------------------------------------ backward
    def _on_grad(self, p: nn.Parameter) -> None:
        if not self.sync:
            return  # accumulating: .grad keeps summing until the micro-batch that reduces
        b, _ = self.where[p]
        b.ready.add(id(p))
        if len(b.ready) == len(b.params):
            self._launch_ready()

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets):
            b = self.buckets[self._next]
            if len(b.ready) < len(b.params):
                return
            self._launch(b)
            self._next += 1

    def _launch(self, b: Bucket) -> None:
        if len(self._inflight) >= 2:  # bound the full gradients alive at once
            self._complete(self._inflight.pop(0))
        b.staging = torch.empty(b.size, dtype=self.flat.dtype, device=self.flat.device)
        b.staging[b.used :].zero_()
        for p, off in zip(b.params, b.offsets):
            dst = b.staging[off : off + p.numel()]
            if p.grad is None:  # unused in this step's forward
                dst.zero_()
            else:
                dst.copy_(p.grad.reshape(-1))
                p.grad = None
        if self.gloo:  # its all-reduce beats its reduce-scatter (plait.ddp.gloo_collectives)
            b.work = dist.all_reduce(b.staging, group=self.group, async_op=True)
        else:
            b.out = torch.empty(b.piece_size, dtype=self.flat.dtype, device=self.flat.device)
            b.work = dist.reduce_scatter_single(b.out, b.staging, group=self.group, async_op=True)
        self._inflight.append(b)

    def _complete(self, b: Bucket) -> None:
        b.work.wait()
        if self.gloo:  # keep this rank's piece of the all-reduced bucket
            lo = self.rank * b.piece_size
            b.out = b.staging[lo : lo + b.piece_size].clone()
        b.out.div_(self.n)  # gloo has no average: sum, then divide (as DDP does)
        piece = self.pieces[self.buckets.index(b)]
        if piece.grad is None:
            piece.grad = b.out
        else:  # reduced after every micro-batch: sum into the piece
            piece.grad.add_(b.out)
        b.staging = b.out = None
        b.work = None
        b.ready.clear()

    def finish_backward(self) -> None:
        """After ``loss.backward()``: reduce the buckets whose parameters got no gradient
        (unused this step), in the same order on every rank, and wait for all."""
        if not self.sync:
            return
        for b in self.buckets[self._next :]:
            b.ready.update(id(p) for p in b.params)
        self._launch_ready()
        while self._inflight:
            self._complete(self._inflight.pop(0))
        self._next = 0

    # ------------------------------------------------------------------ step
    def clip(self, max_norm: float) -> float:
        norm = total_norm([pc.grad for pc in self.pieces if pc.grad is not None], [self.group])
        clip_(self.pieces, max_norm, norm)
        return float(norm)

    @torch.no_grad()
    def gather(self) -> None:
        """Every rank's updated pieces into the parameters (each piece is a slot of the flat
        buffer): an in-place all-gather per bucket (NCCL), or on gloo one in-place broadcast
        per piece from its owner (plait.ddp.gloo_collectives: gloo's all-gather is 5x slower)."""
        if not self.gloo:
            works = [
                dist.all_gather_single(
                    self.flat[b.start : b.start + b.size], pc, group=self.group, async_op=True
                )
                for b, pc in zip(self.buckets, self.pieces)
            ]
        else:
            works = [
                w
                for b in self.buckets
                for w in broadcast_slots(
                    list(self.flat[b.start : b.start + b.size].split(b.piece_size)), self.group
                )
            ]
        for w in works:
            w.wait()

    def zero_grad(self) -> None:
        for pc in self.pieces:
            pc.grad = None

    # ------------------------------------------------------------------ checkpoints
    def _full(self, per_piece: list[torch.Tensor]) -> torch.Tensor:
        """All ranks' pieces of a piece-shaped state tensor laid out as the flat buffer."""
        out = torch.empty_like(self.flat)
        for b, t in zip(self.buckets, per_piece):
            dist.all_gather_single(out[b.start : b.start + b.size], t, group=self.group)
        return out

    def full_state(self, optimizer, names: dict[int, str]) -> dict:
        """Optimizer state per parameter, whole, under single-process names (the same on every
        rank: DCP writes each entry once), in ``get_optimizer_state_dict``'s layout."""
        st = [optimizer.state.get(pc, {}) for pc in self.pieces]
        state: dict[str, dict] = {}
        for key in st[0] if st and st[0] else ():
            if st[0][key].dim() == 0:  # "step": the same for every parameter
                for p in self.where:
                    state.setdefault(names[id(p)], {})[key] = st[0][key].clone()
                continue
            full = self._full([s[key] for s in st])
            for p, (b, off) in self.where.items():
                v = full[b.start + off : b.start + off + p.numel()].view_as(p).clone()
                state.setdefault(names[id(p)], {})[key] = v
        return {"state": state}

    def template(self, optimizer, names: dict[int, str]) -> dict:
        """What a load reads into: zeros shaped like :meth:`full_state`'s entries."""
        if not optimizer.state:
            self._init_state(optimizer)
        st = optimizer.state[self.pieces[0]]
        state = {}
        for p in self.where:
            state[names[id(p)]] = {
                k: v.clone() if v.dim() == 0 else torch.zeros_like(p) for k, v in st.items()
            }
        return {"state": state}

    def set_state(self, optimizer, names: dict[int, str], loaded: dict) -> None:
        for b, pc in zip(self.buckets, self.pieces):
            for key, v in optimizer.state[pc].items():
                first = loaded["state"][names[id(b.params[0])]][key]
                if v.dim() == 0:
                    v.copy_(first)
                    continue
                full = torch.zeros(b.size, dtype=v.dtype, device=v.device)
                for p, off in zip(b.params, b.offsets):
                    full[off : off + p.numel()] = loaded["state"][names[id(p)]][key].reshape(-1)
                lo = self.rank * b.piece_size
                v.copy_(full[lo : lo + b.piece_size])

    def _init_state(self, optimizer) -> None:
        """Create the optimizer's state (a step at lr 0 on zero gradients) so a load has
        tensors to fill; the load then overwrites every entry. Not torch's
        ``_init_optim_state``: that one does nothing once any piece has a gradient, and the
        pieces' gradients are kept here."""
        saved = [(pc, pc.grad) for pc in self.pieces]
        lrs = [g["lr"] for g in optimizer.param_groups]
        for pc in self.pieces:
            pc.grad = torch.zeros_like(pc)
        for g in optimizer.param_groups:
            g["lr"] = 0.0
        optimizer.step()
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
        for pc, grad in saved:
            pc.grad = grad


class FlatZeroEngine(Engine):
    """ZeRO-1/2 on :class:`FlatZero` (torch engine, ``parallel.zero_flat``)."""

    def __init__(self, *args, dp_group, **kwargs):
        self.dp_group = dp_group
        super().__init__(*args, **kwargs)

    def make_optimizer(self) -> torch.optim.Optimizer:
        p = self.cfg.parallel
        self.flat = FlatZero(
            self.model, self.dp_group, int(p.zero_bucket_mb * 2**20), self.cfg.optim.weight_decay
        )
        cls, kw = optimizer_recipe(self.model, self.cfg.optim)
        kw.pop("weight_decay", None)  # per group
        opt = cls(self.flat.optimizer_groups(), **kw)
        opt.plait_flat_zero = self.flat  # checkpoints: plait.ddp.optim_state
        return opt

    def sync(self, last: bool):
        # ZeRO-2 reduce-scatters after every micro-batch unless told otherwise (sharded while
        # accumulating); ZeRO-1 reduces the accumulated whole gradients once
        every = self.cfg.parallel.zero_stage == 2 and self.cfg.parallel.reduce_every_microbatch
        self.flat.sync = last or every
        return super().sync(last)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()
        self.flat.finish_backward()

    def clip_grad_norm(self, max_norm: float) -> float:
        return self.flat.clip(max_norm)

    def optimizer_step(self, max_norm: float, loss_finite: bool):
        res = super().optimizer_step(max_norm, loss_finite)
        if self.scaler:  # GradScaler stepped the optimizer itself
            self.flat.gather()
        return res

    def step(self) -> None:
        self.optimizer.step()
        self.flat.gather()

    def zero_grad(self) -> None:
        self.flat.zero_grad()

    def held_bytes(self) -> dict[str, int]:
        seen: set[int] = set()
        return {
            "params": memory.storage_bytes([self.flat.flat], seen),
            "grads": memory.storage_bytes([pc.grad for pc in self.flat.pieces], seen),
            "optim": memory.storage_bytes(memory.optimizer_tensors(self.optimizer), seen),
            "unsharded": 0,
        }

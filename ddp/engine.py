"""The one surface the trainer drives, whatever the engine: the loop calls these methods and
never branches on the engine (data-parallel or pipeline).

Per step, in order:

- :meth:`Engine.forward_backward` ``(micro_batches, scale) -> loss_sum``: forward and backward
  of this rank's micro-batches, each loss multiplied by ``scale`` (see plait.trainer); returns
  the summed unscaled loss;
- :meth:`Engine.optimizer_step` ``(max_norm, loss_finite) -> StepResult``: unscale (fp16),
  clip, step, skipping the update when the loss or the gradient norm is not finite;
- :meth:`Engine.held_bytes` (logged steps), then :meth:`Engine.zero_grad`.

Besides: :meth:`Engine.set_device` once (autocast and the fp16 ``GradScaler`` live in the
engine), :meth:`Engine.eval_batch` per evaluation batch, :meth:`Engine.full_state`, and
:meth:`Engine.finish` after the last step. Subclasses change the hooks the default loop and step
call (:meth:`Engine.sync`, :meth:`Engine.backward`, :meth:`Engine.clip_grad_norm`,
:meth:`Engine.step`) or the surface itself.

:class:`Engine` is the torch engine (plain model, DDP, ZeRO-1 or FSDP2): autograd backward, torch
clipping, the optimizer's own step. DeepSpeed and fairscale subclass it in their own modules, the
pipeline in plait.pipeline.step.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn

from plait.config import Config
from plait.ddp import memory
from plait.ddp.ddp import no_sync
from plait.grad_norm import clip_grad_norm
from plait.models.base import PlaitModel, canonical_name
from plait.optim import build_optimizer
from plait.tensor_parallel import loss_context, plain

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StepResult(NamedTuple):
    """What :meth:`Engine.optimizer_step` did."""

    grad_norm: float
    #: loss and gradient norm finite; otherwise the update was skipped
    finite: bool
    #: not finite, and the fp16 loss scaler handled it (skipped the update, lowered its scale):
    #: an expected overflow, not a diverged run
    overflow: bool


class Engine:
    """Model + optimizer of one rank and how to run forward/backward, evaluation and the
    optimizer step on them."""

    #: the engine casts to bf16/fp16 itself (DeepSpeed): no autocast, no GradScaler
    owns_precision = False
    device = torch.device("cpu")
    scaler: torch.amp.GradScaler | None = None
    _amp_dtype: torch.dtype | None = None

    def __init__(self, model: nn.Module, inner: PlaitModel, cfg: Config, dp_size: int):
        self.model, self.inner, self.cfg, self.dp_size = model, inner, cfg, dp_size
        self.optimizer = self.make_optimizer()
        self._unsharded = 0

    def make_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.optim)

    def set_device(self, device: torch.device) -> None:
        """The device steps run on: autocast for ``train.dtype`` bf16/fp16 on its type, and for
        fp16 torch's ``GradScaler`` (neither when the engine owns its precision)."""
        self.device = device
        if not self.owns_precision:
            self._amp_dtype = AMP_DTYPES.get(self.cfg.train.dtype)
        if self._amp_dtype is not None and self.cfg.train.dtype == "fp16":
            self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self):
        """Context for forward and loss: autocast under bf16/fp16, else a null context."""
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    @property
    def lr_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose param_groups the lr schedule edits."""
        return self.optimizer

    def forward_backward(self, micro: list[dict[str, torch.Tensor]], scale) -> torch.Tensor:
        """Forward and backward of each micro-batch (on the device), its loss multiplied by
        ``scale``; gradients reduced over dp on the last. Returns the summed unscaled loss."""
        loss_sum = torch.zeros((), device=self.device)
        self.set_loss_scale(scale)
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            # loss_context: vocabulary-sharded logits under tensor parallel (loss_parallel)
            with self.sync(last), loss_context(self.inner):
                with self.autocast():
                    out = self.model(mb["input"])
                    loss = plain(self.inner.loss(out, mb))
                scaled = loss * scale
                self.backward(self.scaler.scale(scaled) if self.scaler else scaled, last)
            loss_sum += loss.detach().float()
        return loss_sum

    def model_parts(self) -> list[nn.Module]:
        """The plait models this rank steps (a pipeline rank: its stages)."""
        return [self.inner]

    def set_loss_scale(self, scale) -> None:
        """Tell the models this step's loss scale (the MoE balance loss's gradient uses it)."""
        for part in self.model_parts():
            if hasattr(part, "set_loss_scale"):
                part.set_loss_scale(float(scale))

    def sync(self, last: bool):
        """Context for one micro-batch's forward+backward: gradient all-reduce only on the last."""
        return no_sync(self.model, sync=last)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def optimizer_step(self, max_norm: float, loss_finite: bool) -> StepResult:
        """Unscale (fp16), clip to ``max_norm`` (inf: measure only) and step; the update is
        skipped when ``loss_finite`` is False or the gradient norm is not finite (with a loss
        scaler, the scaler decides)."""
        for part in self.model_parts():  # MoE: expert gradients, balancing bias
            if hasattr(part, "before_optimizer_step"):
                part.before_optimizer_step()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip_grad_norm(max_norm)
        finite = loss_finite and math.isfinite(grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the update itself when grads overflowed
            self.scaler.update()
        elif finite:
            self.step()
        return StepResult(grad_norm, finite, not finite and self.scaler is not None)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip to ``max_norm`` (inf: measure only) and return the global norm."""
        return clip_grad_norm(self.model.parameters(), max_norm)  # exact whatever the sharding

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def held_bytes(self) -> dict[str, int]:
        """Bytes held by this rank now (call after the step, before zero_grad)."""
        out = memory.held_bytes(self.model, self.optimizer)
        out["unsharded"] = self._unsharded
        return out

    @torch.no_grad()
    def eval_batch(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """(loss sum, correct, count) of one batch (on the device), under no_grad."""
        acc = torch.zeros(3, device=self.device)
        with self.autocast(), loss_context(self.inner):
            out = self.model(mb["input"])
            acc[0] = plain(self.inner.loss(out, mb)).float()
        if self.inner.task == "classification":  # lm logits may be vocabulary-sharded
            acc[1] = (out.argmax(-1) == mb["target"]).sum()
        acc[2] = self.inner.count(mb)
        return acc

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights on CPU under single-process names."""
        out = {}
        for k, v in self.inner.state_dict().items():
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()  # FSDP2 / TP shards: all-gather (collective on all ranks)
            out[canonical_name(k)] = v.detach().cpu().clone()
        return out

    def finish(self, run_dir, *, write: bool) -> None:
        """After the last step, on every rank (``write``: the rank that writes files)."""

"""DeepSpeed ZeRO 0-3 from plait's own config: the user never writes a DeepSpeed JSON (but may
pass one in ``parallel.deepspeed_config`` whose keys override plait's).

Numerics kept identical to the torch engines:
- gradient clipping: DeepSpeed 0.19 clips to 1.0 unless told otherwise, so plait always passes
  ``train.grad_clip`` (0 = off). Its ZeRO 1-3 optimizers take per-tensor norms in float64, as
  plait.grad_norm does, so their clip factor is layout-independent; ZeRO-0 in fp32 would clip
  with fp32 norms (``deepspeed.runtime.utils.clip_grad_norm_``), so there plait clips instead;
- loss normalisation: plait already divides by the global count of the step (including
  accumulation), so backward runs with ``scale_wrt_gas=False``; DeepSpeed averages gradients
  over dp ranks like DDP does;
- accumulation: DeepSpeed counts micro-steps itself, so ``engine.step()`` runs after every
  micro-batch and updates only on the boundary;
- precision: DeepSpeed casts (and, for fp16, scales the loss) itself, so the engine uses no
  autocast and no torch ``GradScaler``;
- the optimizer is plait's torch optimizer (``zero_force_ds_cpu_optimizer=False``), also with
  offload, so no C++ op is JIT-compiled; on CPU the shm all-reduce op is disabled for the same
  reason (it needs a compiler at run time).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from plait.config import Config, merge
from plait.ddp import memory
from plait.ddp.engine import Engine, StepResult
from plait.grad_norm import clip_grad_norm
from plait.models.base import canonical_name
from plait.optim import build_optimizer


def deepspeed_config(cfg: Config, dp: int) -> dict:
    """DeepSpeed's config dict for this plait config."""
    t, p = cfg.train, cfg.parallel
    zero: dict = {"stage": p.zero_stage}
    if p.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if p.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    ds = {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.global_batch // dp // t.grad_accum,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": 0.0 if plait_clips(cfg) else t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.dtype == "bf16"},
        "fp16": {"enabled": t.dtype == "fp16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if p.deepspeed_config:
        ds = merge(ds, json.loads(Path(p.deepspeed_config).read_text()))
    return ds


def plait_clips(cfg: Config) -> bool:
    """ZeRO-0 in fp32: DeepSpeed's engine would clip with fp32 norms, so plait clips (see top)."""
    return cfg.parallel.zero_stage == 0 and cfg.train.dtype == "fp32"


def import_deepspeed():
    # deferred here and below: deepspeed is an optional extra
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


class DeepSpeedEngine(Engine):
    owns_precision = True

    def __init__(self, model, inner, cfg: Config, dp_size: int, *, device: torch.device):
        self.cfg, self.inner, self.dp_size = cfg, inner, dp_size
        ds = import_deepspeed()
        self._torch_opt = build_optimizer(model, cfg.optim)
        self.ds, self.optimizer, _, _ = ds.initialize(
            model=model, optimizer=self._torch_opt, config=deepspeed_config(cfg, dp_size)
        )
        self.model = self.ds
        self._unsharded, self._before = 0, {}

    @property
    def lr_optimizer(self) -> torch.optim.Optimizer:
        # DeepSpeed's ZeRO optimizers step this torch optimizer and keep its param_groups (only
        # their 'params' are replaced by flat partitions), so the lr schedule edits it directly
        return self._torch_opt

    def sync(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # plait's scale already covers accumulation
        if not last:
            self.ds.step()  # counts the micro-step; DeepSpeed updates on the boundary only

    def optimizer_step(self, max_norm: float, loss_finite: bool) -> StepResult:
        """DeepSpeed clips inside its own step (with ``train.grad_clip``) and steps whatever the
        loss; the norm is the one it measured, or at ZeRO-0 plait's (see the module docstring)."""
        norm = None
        if self.cfg.parallel.zero_stage == 0:  # ZeRO-0 reports no norm: measure it here
            norm = clip_grad_norm(
                self.ds.module.parameters(), max_norm if plait_clips(self.cfg) else math.inf
            )
        self.step()
        if norm is None:
            norm = self.ds.get_global_grad_norm()
        grad_norm = math.nan if norm is None else float(norm)
        return StepResult(grad_norm, loss_finite and math.isfinite(grad_norm), False)

    def step(self) -> None:
        self._before = self._held()  # DeepSpeed frees its gradients inside step()
        self.ds.step()

    def zero_grad(self) -> None:
        pass  # DeepSpeed zeroes its gradients at the end of its step

    def held_bytes(self) -> dict[str, int]:
        """The larger of what was held just before DeepSpeed's step (gradients alive) and now."""
        after = self._held()
        return {k: max(v, self._before.get(k, 0)) for k, v in after.items()}

    def _held(self) -> dict[str, int]:
        """Module parameters (or their ZeRO-3 partitions), gradients, then everything the ZeRO
        optimizer keeps: flat parameter groups count as params, fp32 partitions and the torch
        optimizer's state as optimizer state, gradient buffers as grads."""
        seen: set[int] = set()
        params = list(self.ds.module.parameters())
        parts = [getattr(p, "ds_tensor", None) for p in params]
        out = {
            "params": memory.storage_bytes(params, seen) + memory.storage_bytes(parts, seen),
            "grads": memory.storage_bytes((p.grad for p in params), seen),
            "optim": memory.storage_bytes(memory.optimizer_tensors(self._torch_opt), seen),
            "unsharded": 0,
        }
        zopt = self.optimizer if self.optimizer is not self._torch_opt else None
        for name, value in vars(zopt).items() if zopt is not None else ():
            n = memory.storage_bytes(_tensors(value), seen)
            low = name.lower()
            if "grad" in low or "ipg" in low or "reduce" in low or "bucket" in low:
                out["grads"] += n
            elif "fp32" in low or "master" in low:
                out["optim"] += n
            else:
                out["params"] += n
        return out

    def full_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.parallel.zero_stage == 3:
            import deepspeed  # deferred: optional extra

            with deepspeed.zero.GatheredParameters(list(self.ds.module.parameters())):
                return _cpu_state(self.inner)
        return _cpu_state(self.inner)


def _cpu_state(model) -> dict[str, torch.Tensor]:
    return {canonical_name(k): v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _tensors(value, depth: int = 0):
    """Tensors inside an attribute: itself, or in lists / tuples / dicts up to 3 levels."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)

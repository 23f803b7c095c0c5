"""fairscale: OSS (ZeRO-1, with torch DDP for the gradients) and OSS + ShardedDDP (ZeRO-2).

fairscale 0.4.13 is correct here only when gradients are zeroed in place
(``zero_grad(set_to_none=False)``): ShardedDDP's reduce hooks and OSS's broadcast keep
references to the ``.grad`` tensors, and a fresh tensor after ``None`` is never reduced. plait
zeroes that way itself, so the user never meets it. Its FSDP and Pipe are broken on this torch
and are not exposed (zero_stage 3 is refused at config time).
"""

from __future__ import annotations

from plait.ddp.ddp import apply_ddp
from plait.ddp.engine import Engine
from plait.ddp.zero1 import optimizer_recipe
from plait.grad_norm import clip_grad_norm
from plait.optim import param_groups


class FairscaleEngine(Engine):
    def __init__(self, model, inner, cfg, dp_size: int, *, dp_group, dp_mesh, device):
        from fairscale.optim import OSS  # deferred: fairscale is an optional extra

        self.cfg, self.inner, self.dp_size, self.dp_group = cfg, inner, dp_size, dp_group
        cls, kw = optimizer_recipe(model, cfg.optim)
        kw.pop("weight_decay", None)  # per group
        self.optimizer = OSS(
            param_groups(model, cfg.optim.weight_decay), optim=cls, group=dp_group, **kw
        )
        if cfg.parallel.zero_stage == 2:
            from fairscale.nn.data_parallel import ShardedDataParallel  # optional extra

            self.model = ShardedDataParallel(model, self.optimizer, process_group=dp_group)
        else:
            self.model = apply_ddp(model, dp_mesh=dp_mesh, device=device)
        self._unsharded = 0

    def clip_grad_norm(self, max_norm: float) -> float:
        # each rank may hold only its shard's gradients: the squared norms of the parameters it
        # owns are summed over dp (OSS.clip_grad_norm does the same with fp32 norms, which
        # depend on the sharding; plait.grad_norm says why)
        oss = self.optimizer
        owned = [p for group in oss.partition_parameters()[oss.rank] for p in group["params"]]
        device = next(self.inner.parameters()).device  # a rank may own no gradient
        return clip_grad_norm(owned, max_norm, [self.dp_group], device)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)  # see the module docstring
        self.model.zero_grad(set_to_none=False)

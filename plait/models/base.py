"""The common model interface every parallelism is written against.

A plait model is an ``nn.Module`` that also says how it may be cut:

- ``layers``: an ``nn.ModuleDict`` of blocks keyed "0", "1", ... Pipeline stages delete the
  blocks they do not own; string keys keep every parameter's fully qualified name the same as
  in the single-process model (torchtitan's trick), so checkpoints and init never depend on
  the layout. ``pre_modules()`` run before the first block and go with the first stage,
  ``post_modules()`` after the last and go with the last stage.
- ``tp_plan()``: module-name pattern -> sharding style name, applied by ``plait.tensor_parallel``
  (style names: ``plait/tensor_parallel/styles.py``); ``tp_dims()``: sizes split whole by tp.
- ``loss(output, batch)``: the loss *summed* over samples/tokens; ``count(batch)`` how many.
  The trainer divides by the global count of the step so micro-batching, DP and PP agree.
- ``block_flops(block, seq_len)``: forward FLOPs of one block (pipeline stages balance on it);
  ``plan_dims()``: the decoder sizes ``plait plan`` models (None: not planned).
- ``init_weights(seed)``: each parameter's value comes from a generator seeded by (seed,
  parameter name), drawn at full shape and then sliced to whatever shard this rank holds, so
  the value never depends on sharding, device or process count.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from plait.parallel_attrs import EXPERT_SHARD_ATTR
from plait.seeding import name_seed

WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod")


def canonical_name(name: str) -> str:
    """A parameter's name in the plain single-process model: activation-checkpoint and compile
    wrappers removed, and a leading DDP ``module.``."""
    parts = [p for p in name.split(".") if p not in WRAPPER_PARTS]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _write_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full-shape CPU tensor into ``param``, which may be a DTensor shard."""
    # deferred: torch.distributed.tensor (with sympy) loads only when a model is initialised
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            # src_data_rank=None: every rank already holds the full value, so slice locally
            # instead of scattering from rank 0 (no communication, same result).
            local = distribute_tensor(
                full.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None
            ).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full.to(dtype=param.dtype, device=param.device))


class PlaitModel(nn.Module):
    """Base class: subclasses build ``self.layers`` and define ``param_init`` and ``loss``."""

    #: "classification" (inputs -> class logits) or "lm" (tokens -> next-token logits)
    task: str = "classification"
    layers: nn.ModuleDict

    # ---- cutting
    def pre_modules(self) -> list[str]:
        """Attribute names of modules that run before the first block."""
        return []

    def post_modules(self) -> list[str]:
        """Attribute names of modules that run after the last block."""
        return []

    def tp_plan(self) -> dict[str, str]:
        """Module-name pattern -> style. Empty: the model refuses tp > 1."""
        return {}

    def tp_dims(self) -> dict[str, int]:
        """Config key -> size that tensor parallel splits whole (e.g. attention heads), checked
        for divisibility by tp before launch on top of the sharded Linear/Embedding sizes."""
        return {}

    # ---- cost: pipeline balance and the planner read these, never attribute names
    def block_flops(self, block: nn.Module, seq_len: int) -> float:
        """Forward FLOPs per sample (per token for an lm) of ``block``, one of ``layers``.
        Default: its matmuls (:func:`matmul_flops`); a model with attention adds the scores
        and values (:func:`attention_flops`), which hold no weights."""
        return matmul_flops(block)

    def plan_dims(self) -> dict[str, int] | None:
        """For ``plait plan``: the sizes of a decoder its formulas model (dim, n_layers, n_heads,
        n_kv_heads, ffn_dim, vocab_size; parameter counts come from the modules). None: this
        architecture is not planned."""
        return None

    # ---- loss
    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy summed over targets; ``output`` is (..., classes) logits."""
        logits = output.flatten(0, -2)
        return nn.functional.cross_entropy(
            logits.float(), batch["target"].flatten(), reduction="sum"
        )

    def set_loss_scale(self, scale: float) -> None:
        """The trainer's loss multiplier of this step (see plait.trainer), for a model whose
        forward adds a loss term of its own (the MoE balance loss). Default: nothing."""

    def before_optimizer_step(self) -> None:
        """After the step's last backward, before clipping: the MoE expert-gradient reduction
        and balancing-bias update (plait.expert_parallel). Default: nothing."""

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Number of terms ``loss`` sums over."""
        return batch["target"].numel()

    # ---- init
    def param_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        """Full-shape fp32 CPU value of parameter ``name``. Default: PyTorch's Linear init."""
        if len(shape) >= 2:
            bound = 1.0 / math.sqrt(shape[1])
            return torch.empty(shape).uniform_(-bound, bound, generator=gen)
        if name.endswith("bias"):
            return torch.zeros(shape)
        return torch.ones(shape)  # norm weights

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers after ``to_empty`` (RoPE tables, BatchNorm stats)."""
        for mod in self.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        done = self._init_from_reset_parameters(seed)
        for name, p in self.named_parameters():
            name = canonical_name(name)
            if name in done:
                continue
            gen = torch.Generator().manual_seed(name_seed(seed, name))
            shard = getattr(p, EXPERT_SHARD_ATTR, None)  # an expert slice: draw it whole
            full = self.param_init(name, shard.full_shape if shard else p.shape, gen)
            _write_full(p, shard.narrow(full, p.shape) if shard else full)
        self.init_buffers()

    # ---- defaults for one's own model (the Python API); kept apart from the zoo's
    # methods above. A model that does not override param_init is initialised by each module's
    # own reset_parameters, run on a full-shape CPU copy under a generator seeded by (seed,
    # module name): the values never depend on the layout. The copies are meta-device
    # templates taken before any parallel wrapper touches the model (capture_init_templates).
    def _init_from_reset_parameters(self, seed: int) -> set[str]:
        templates = self.__dict__.get("_plait_init_templates")
        if not templates or type(self).param_init is not PlaitModel.param_init:
            return set()
        params = {canonical_name(n): p for n, p in self.named_parameters()}
        done = set()
        for mod_name, template in templates.items():
            full = copy.deepcopy(template).to_empty(device="cpu")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(name_seed(seed, mod_name))
                full.reset_parameters()
            for pname, value in full.named_parameters(recurse=False):
                name = f"{mod_name}.{pname}" if mod_name else pname
                if name in params:  # a pipeline stage holds only some modules
                    _write_full(params[name], value.detach())
                    done.add(name)
        return done


def capture_init_templates(model: nn.Module) -> None:
    """Remember a meta copy of every module that owns parameters and has ``reset_parameters``
    (before tensor/data parallel reshape or wrap them), for the reset_parameters default init."""
    templates = {}
    for name, mod in model.named_modules():
        own = list(mod.named_parameters(recurse=False))
        if own and callable(getattr(mod, "reset_parameters", None)):
            t = copy.copy(mod)
            t._modules = {}  # only the module's own parameters: children have their own entries
            templates[name] = copy.deepcopy(t).to("meta")
    model.__dict__["_plait_init_templates"] = templates


def matmul_flops(module: nn.Module) -> float:
    """Forward FLOPs per sample or token of the Linear / Conv1d layers in ``module``: 2 x their
    weights (multiply-adds; embeddings are lookups, norms are negligible)."""
    return sum(
        2.0 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d)
    )


def attention_flops(seq_len: int, width: int) -> float:
    """Forward FLOPs per token of attention's QK^T and AV over ``seq_len`` keys, with ``width``
    = heads x head dim: 2·T·width each, counted over the full square as the planner does."""
    return 4.0 * seq_len * width


def param_count(model: nn.Module) -> int:
    """Parameters of the full model (DTensor shards counted at full size)."""
    return sum(p.numel() for p in model.parameters())

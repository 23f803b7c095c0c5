"""Rank functions for tests/test_tensor_parallel.py, run through helpers.run_in_ranks: several
checks and configs share one launch of gloo processes (start-up dominates on CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from helpers import train_configs
from plait.config import load_config


def _tiny_gpt(n_layers: int, *, tp_mesh, sp: bool, loss_parallel: bool = True, dropout=0.0):
    from plait.models import build_model
    from plait.tensor_parallel import apply_tp

    cfg = load_config(
        None, [f"model.n_layers={n_layers}", "data.seq_len=16", f"model.dropout={dropout}"]
    )
    model = build_model(cfg)
    apply_tp(model, tp_mesh=tp_mesh, sequence_parallel=sp, loss_parallel=loss_parallel)
    model.to_empty(device="cpu")
    model.init_weights(0)
    return model


class _NoModuleTracking:
    """Stands in for CommDebugMode's per-module tracker, which raises IndexError in
    _fw_set_module_hook on this model in torch 2.13; only total counts are needed here (forward
    and backward are measured in separate modes)."""

    name, is_bw, activation_checkpointing = "Global", False, False
    module_parents_dict = {"Global": set()}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def _comm_mode():
    from torch.distributed.tensor.debug import CommDebugMode

    mode = CommDebugMode()
    mode.advanced_module_tracker = _NoModuleTracking()
    return mode


def _counts(mode) -> dict[str, int]:
    return {str(k).split(".")[-1]: v for k, v in mode.get_comm_counts().items()}


def _step_counts(model, tokens) -> tuple[dict, dict]:
    """Collective counts of one forward (+ loss) and of its backward, measured separately."""
    from plait.tensor_parallel import loss_context, plain

    batch = {"input": tokens, "target": tokens}
    with loss_context(model):
        with _comm_mode() as fwd:
            loss = plain(model.loss(model(tokens), batch))
        with _comm_mode() as bwd:
            loss.backward()
    return _counts(fwd), _counts(bwd)


def _shapes_seen(model, tokens) -> list[tuple[int, ...]]:
    """Shapes of every tensor a rank materialises (outputs of the ops on local tensors) in
    forward, loss and backward. Like CommDebugMode, the mode returns NotImplemented for DTensor
    ops so DTensor desugars them first: what it records are the local computations."""
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from plait.tensor_parallel import loss_context, plain

    seen: list[tuple[int, ...]] = []

    class LocalShapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(issubclass(t, DTensor) for t in types):
                return NotImplemented
            out = func(*args, **(kwargs or {}))
            seen.extend(tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    with loss_context(model), LocalShapes():
        plain(model.loss(model(tokens), {"target": tokens})).backward()
    return seen


def comm_and_shapes() -> dict:
    """On 2 ranks: per-block collective counts (blocks L=2 minus L=1, so embedding, head and
    loss cancel), with and without sequence parallel; tensor shapes seen with and without
    loss_parallel; the dropout random-state policy."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    out: dict = {"counts": {}}
    for sp in (False, True):
        per_l = [_step_counts(_tiny_gpt(n, tp_mesh=mesh, sp=sp), tokens) for n in (1, 2)]
        block = [{k: per_l[1][d][k] - per_l[0][d].get(k, 0) for k in per_l[1][d]} for d in (0, 1)]
        out["counts"][sp] = {"block": block, "one_layer": per_l[0]}
    out["shapes"] = {
        lp: _shapes_seen(_tiny_gpt(1, tp_mesh=mesh, sp=False, loss_parallel=lp), tokens)
        for lp in (True, False)
    }
    out["dropout"] = _dropout_policy(mesh, tokens)
    return out


def _dropout_policy(mesh, tokens) -> dict:
    """Seed like the trainer (one stream per dp rank, shared by tp ranks) and run a step with
    dropout: the replicated residual stream must stay identical across tp ranks."""
    from plait.tensor_parallel import loss_context, plain

    torch.manual_seed(1234)  # same on both tp ranks: they form one dp rank
    model = _tiny_gpt(2, tp_mesh=mesh, sp=False, dropout=0.2)
    model.train()
    captured = {}
    model.layers["1"].register_forward_hook(lambda m, i, o: captured.setdefault("h", o.detach()))
    with loss_context(model):
        plain(model.loss(model(tokens), {"target": tokens})).backward()
    h = captured["h"]  # (B, T, D) residual stream after the last block, a plain tensor
    gathered = [torch.empty_like(h) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, h)
    return {"replicated_equal": all(torch.equal(g, gathered[0]) for g in gathered)}


def two_rank_suite(cfg_dicts: list[dict]) -> dict:
    dist.init_process_group("gloo")  # kept for the configs: see helpers.train_configs
    return {"checks": comm_and_shapes(), "runs": train_configs(cfg_dicts)}

"""The memory plan against what a real single-process step of gpt small holds on CPU.

Method (no CUDA allocator needed):
- model states: bytes of the live tensors themselves - parameters, ``.grad`` after backward,
  and every tensor in ``optimizer.state`` after the AdamW step - counted once per storage;
- activations: a ``torch.autograd.graph.saved_tensors_hooks`` pack hook sees every tensor
  autograd saves for backward during forward + loss; we sum the bytes of their distinct
  storages (views share one), leaving out parameters and buffers, and add the logits the
  caller holds through backward. Nothing is freed before backward starts, so this sum is the
  activation peak;
- measured step peak = params + optimizer state + max(activations, gradients): the trainer
  sets gradients to None after each step, so in a one-micro-batch step gradients only grow as
  activations are freed (the plan's ``Memory.total`` follows the same rule).
"""

from __future__ import annotations

import pytest
import torch

from plait.config import load_config
from plait.models import build_model
from plait.optim import build_optimizer
from plait.plan import Job, Layout, ModelShape, plan_memory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: these measure bytes


def _storage_bytes(tensors, skip=()) -> int:
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


@pytest.mark.timeout(120)
def test_gpt_small_memory_plan_matches_live_tensors():
    B, T = 4, 128
    cfg = load_config("configs/gpt_small.yaml", [f"data.seq_len={T}", f"train.global_batch={B}"])
    torch.manual_seed(0)
    model = build_model(cfg, "cpu")
    opt = build_optimizer(model, cfg.optim)
    tokens = torch.randint(0, 256, (B, T + 1))
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}

    fixed = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fixed |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(batch["input"])
        loss = model.loss(out, batch)
    activations = _storage_bytes(saved + [out], skip=fixed)
    saved.clear()
    loss.backward()
    grads = _storage_bytes(p.grad for p in model.parameters())
    opt.step()
    params = _storage_bytes(model.parameters())
    opt_state = _storage_bytes(
        v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)
    )
    measured_peak = params + opt_state + max(activations, grads)
    print(
        f"measured: params {params} grads {grads} adamw {opt_state} activations {activations} peak {measured_peak}"
    )

    shape = ModelShape.from_config(cfg)
    mem = plan_memory(shape, Layout(), Job(B, T, "fp32", "adamw"), 80 * 2**30)
    print(
        f"planned:  params {mem.params:.0f} grads {mem.grads:.0f} adamw {mem.optimizer:.0f} "
        f"activations {mem.activations:.0f} total {mem.total:.0f}"
    )
    # parameter / gradient / AdamW-state bytes: within 5% (exact up to AdamW's scalar 'step's)
    assert mem.params == pytest.approx(params, rel=0.05)
    assert mem.grads == pytest.approx(grads, rel=0.05)
    assert mem.optimizer == pytest.approx(opt_state, rel=0.05)
    # activations and the total peak of the step: within 5%
    assert mem.activations == pytest.approx(activations, rel=0.05), (mem.activations, activations)
    assert mem.total == pytest.approx(measured_peak, rel=0.05), (mem.total, measured_peak)


@pytest.mark.timeout(60)
def test_gpt_small_checkpointed_activations_match_saved_tensors():
    """With plait's full activation checkpointing each block saves only its input; compared
    without the plan's transients (the block being recomputed, the logits' gradients), which
    are never saved and so invisible to the hook."""
    from plait.parallelize import apply_activation_checkpoint
    from plait.plan.memory import transient_activation_bytes
    from plait.plan.stages import rank_parts

    B, T = 2, 128
    cfg = load_config("configs/gpt_small.yaml", [f"data.seq_len={T}", f"train.global_batch={B}"])
    model = build_model(cfg, "cpu")
    apply_activation_checkpoint(model, "full", 1)
    tokens = torch.randint(0, 256, (B, T + 1))
    fixed = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fixed |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(tokens[:, :-1])
        model.loss(out, {"target": tokens[:, 1:]})
    measured = _storage_bytes(saved + [out], skip=fixed)

    shape, job = ModelShape.from_config(cfg), Job(B, T, "fp32", "adamw")
    layout = Layout(activation_checkpoint="full")
    mem = plan_memory(shape, layout, job, 80 * 2**30)
    transient = transient_activation_bytes(shape, layout, job, rank_parts(shape, layout)[0])
    planned = mem.activations - transient
    assert planned == pytest.approx(measured, rel=0.05), (planned, measured)


@pytest.mark.timeout(60)
def test_ddp_gradients_are_its_buckets(tmp_path):
    """torch DDP as plait.ddp.ddp.apply_ddp builds it (gradient_as_bucket_view=True, 25 MB
    buckets): every ``.grad`` is a view into a flat all-reduce bucket, so the buckets add no
    copy and the plan counts the gradients once, with no DDP buffer. A communication hook sees
    each bucket's flat buffer. One gloo rank in this process is enough: the reducer buckets the
    same way at any size (apply_ddp itself is a no-op on one rank, hence DDP here)."""
    import torch.distributed as dist

    cfg = load_config("configs/gpt_small.yaml", ["data.seq_len=32", "train.global_batch=2"])
    model = build_model(cfg, "cpu")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
        buffers = {}

        def hook(state, bucket):
            buf = bucket.buffer()
            buffers[buf.untyped_storage().data_ptr()] = buf.untyped_storage().nbytes()
            fut = torch.futures.Future()
            fut.set_result(buf)
            return fut

        ddp.register_comm_hook(None, hook)
        tokens = torch.randint(0, 256, (2, 33))
        model.loss(ddp(tokens[:, :-1]), {"target": tokens[:, 1:]}).backward()
        grads = _storage_bytes(p.grad for p in model.parameters())
        in_buckets = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
    finally:
        dist.destroy_process_group()

    shape, job = ModelShape.from_config(cfg), Job(2, 32, "fp32", "adamw")
    mem = plan_memory(shape, Layout(dp_shard=2), job, 80 * 2**30)
    assert in_buckets <= set(buffers)  # every gradient lives in a bucket
    assert sum(buffers.values()) == pytest.approx(grads, rel=0.05)
    assert mem.buffers == 0
    assert mem.grads == pytest.approx(sum(buffers.values()), rel=0.05)


def _saved_during(model, tokens, autocast=None):
    """Bytes autograd saves in forward + loss (distinct storages, no parameters), the output the
    caller holds included; ``autocast``: a dtype for CPU autocast, whose cast copies of the
    weights (the plan's "autocast" buffer, not activations) are left out too."""
    import contextlib

    fixed = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fixed |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    weights = {s for p in model.parameters() if p.dim() == 2 for s in (p.shape, p.shape[::-1])}
    saved = []
    before = {id(t) for t in _live_tensors()}
    ctx = torch.autocast("cpu", autocast) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with ctx:
            out = model(tokens[:, :-1])
            loss = model.loss(out, {"target": tokens[:, 1:]})
    # a checkpoint's own saves (non-reentrant checkpoint and its selective cache) happen under
    # its inner hooks, out of sight of this one: they are the tensors new since forward began
    saved += [t for t in _live_tensors() if id(t) not in before]
    if autocast:
        saved = [t for t in saved if not (t.dtype == autocast and tuple(t.shape) in weights)]
    return _storage_bytes(saved + [out], skip=fixed), loss


def _live_tensors() -> list:
    import gc

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


@pytest.mark.timeout(60)
def test_op_checkpoint_saves_what_the_plan_says():
    """parallel.activation_checkpoint=op: each block keeps its input and its matmul and
    attention outputs (plait.plan.memory's "op" term); compared without the transients, which
    are never saved."""
    from plait.parallelize import apply_activation_checkpoint
    from plait.plan.memory import transient_activation_bytes
    from plait.plan.stages import rank_parts

    B, T = 2, 128
    cfg = load_config("configs/gpt_small.yaml", [f"data.seq_len={T}", f"train.global_batch={B}"])
    model = build_model(cfg, "cpu")
    apply_activation_checkpoint(model, "op", 1)
    measured, _ = _saved_during(model, torch.randint(0, 256, (B, T + 1)))
    shape, job = ModelShape.from_config(cfg), Job(B, T, "fp32", "adamw")
    layout = Layout(activation_checkpoint="op")
    mem = plan_memory(shape, layout, job, 80 * 2**30)
    planned = mem.activations - transient_activation_bytes(
        shape, layout, job, rank_parts(shape, layout)[0]
    )
    assert planned == pytest.approx(measured, rel=0.05), (planned, measured)


@pytest.mark.timeout(60)
def test_head_and_loss_term_is_what_torch_saves_under_bf16_autocast():
    """The head + loss term at a large vocabulary, where it dominates: under bf16 autocast the
    caller holds the bf16 logits and cross-entropy saves its fp32 log-softmax, not the fp32
    copy of the logits (which autograd frees): 2 + 4 bytes per logit."""
    from plait.plan.memory import head_activation_bytes

    B, T, V = 2, 64, 16384
    cfg = load_config(
        "configs/gpt_small.yaml",
        [
            f"data.seq_len={T}",
            f"train.global_batch={B}",
            f"model.vocab_size={V}",
            "model.n_layers=1",
        ],
    )
    model = build_model(cfg, "cpu")
    tokens = torch.randint(0, V, (B, T + 1))
    whole, _ = _saved_during(model, tokens, torch.bfloat16)
    model.layers["0"].forward = lambda x, *a, **k: x  # the head and loss alone
    head, _ = _saved_during(model, tokens, torch.bfloat16)
    shape, job = ModelShape.from_config(cfg), Job(B, T, "bf16", "adamw")
    planned = head_activation_bytes(shape, B * T, job)
    assert whole > head
    assert planned == pytest.approx(head, rel=0.05), (planned, head)


@pytest.mark.timeout(120)
def test_op_checkpoint_trains_like_no_checkpoint(tmp_path):
    """Same losses and final weights as no checkpointing (fp32, one process): op-level
    checkpointing only chooses what to keep, never changes a value."""
    from helpers import assert_same_run, run_single

    base = ["model.n_layers=2", "data.seq_len=32", "train.global_batch=4", "train.steps=3"]
    ref = run_single(base, tmp_path / "ref")
    got = run_single(base + ["parallel.activation_checkpoint=op"], tmp_path / "op")
    assert_same_run(ref, got, rtol=1e-6)


@pytest.mark.timeout(60)
def test_pipeline_fsdp_holds_the_stage_unsharded_across_micro_batches(tmp_path):
    """torch's PipelineStage makes FSDP2 skip gradient sync and reshard-after-backward until the
    last micro-batch (the three calls below are the ones it makes): after a non-last
    micro-batch the stage's parameters stay gathered and its gradients unsharded, which is the
    plan's pp + FSDP2 buffer. One gloo rank: unsharded sizes do not depend on the mesh size."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from plait.ddp.fsdp import apply_fsdp, unsharded_param_bytes
    from plait.plan.memory import pipeline_recv_bytes, rank_memory
    from plait.plan.stages import rank_parts

    cfg = load_config("configs/gpt_small.yaml", ["data.seq_len=32", "train.global_batch=2"])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = build_model(cfg, "cpu")
        mesh = init_device_mesh("cpu", (1,))
        apply_fsdp(model, mesh=mesh, reshard_after_forward=True, dtype="fp32", cpu_offload=False,
                   device=torch.device("cpu"))  # fmt: skip
        model.set_is_last_backward(False)
        model.set_reshard_after_backward(False)
        model.set_requires_gradient_sync(False)
        tokens = torch.randint(0, 256, (2, 33))
        model.loss(model(tokens[:, :-1]), {"target": tokens[:, 1:]}).backward()
        held = unsharded_param_bytes(model)
        grads = _storage_bytes(
            p.grad for m in model.modules() for p in _unsharded_params(m) if p.grad is not None
        )
    finally:
        dist.destroy_process_group()

    shape, job = ModelShape.from_config(cfg), Job(2, 32, "fp32", "adamw")
    lay = Layout(dp_shard=2, pp=2, zero_stage=3, microbatches=2)
    # the plan's whole-model stage (one pipeline rank holding every block, for the comparison)
    part = rank_parts(shape, Layout())[0]
    mem = rank_memory(shape, lay, job, part, 80 * 2**30)
    planned = mem.buffers + mem.grads - pipeline_recv_bytes(shape, lay, job, part)
    assert planned == pytest.approx(held + grads, rel=0.05), (planned, held, grads)


def _unsharded_params(module):
    """FSDP2's unsharded parameters of one module (plain tensors swapped in while gathered)."""
    from torch.distributed.tensor import DTensor

    return [p for p in module.parameters(recurse=False) if not isinstance(p, DTensor)]


@pytest.mark.timeout(60)
def test_zero3_root_unit_and_head_grads_held_through_backward(tmp_path):
    """FSDP2 ZeRO-3 (plait's units: each block and the root): when backward reaches the
    embedding, the root unit (embedding, final norm, head) is gathered and the head's gradients
    wait unsharded for the root's reduce-scatter, the plan's ZeRO-3 root term (its blocks'
    share is the two prefetched blocks and one block's gradients). One gloo rank: unsharded
    sizes do not depend on the mesh size."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from plait.ddp.fsdp import apply_fsdp, unsharded_param_bytes

    cfg = load_config("configs/gpt_small.yaml", ["data.seq_len=32", "train.global_batch=2"])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    seen = {}
    try:
        model = build_model(cfg, "cpu")
        apply_fsdp(model, mesh=init_device_mesh("cpu", (1,)), reshard_after_forward=True,
                   dtype="fp32", cpu_offload=False, device=torch.device("cpu"))  # fmt: skip
        emb = getattr(model, model.pre_modules()[0])

        def record(_grad):
            seen["params"] = unsharded_param_bytes(model)
            seen["grads"] = _storage_bytes(
                p.grad for m in model.modules() for p in _unsharded_params(m) if p.grad is not None
            )

        emb.register_forward_hook(lambda m, i, out: [out.register_hook(record)] and None)
        tokens = torch.randint(0, 256, (2, 33))
        model.loss(model(tokens[:, :-1]), {"target": tokens[:, 1:]}).backward()
    finally:
        dist.destroy_process_group()
    shape = ModelShape.from_config(cfg)
    assert seen["params"] == 4 * (shape.embed_params + shape.head_params)
    assert seen["grads"] == 4 * shape.head_params
    from plait.plan.memory import zero3_unsharded_bytes
    from plait.plan.stages import rank_parts

    lay = Layout(dp_shard=2, zero_stage=3, reshard_after_forward=True)  # as measured above
    job = Job(2, 32, "fp32")
    part = rank_parts(shape, lay)[0]
    # the plan's root unit (no block terms: blk=0): what backward holds gathered at the end
    root = zero3_unsharded_bytes(shape, lay, job, part, 0.0, 4, 4, nosync=True)
    assert root == pytest.approx(seen["params"], rel=0.05)
    # in the last block's backward the head's gradients wait too, with two gathered blocks
    # and one block's gradients, less what the head and the loss have freed by then
    blk = shape.block_params
    full = zero3_unsharded_bytes(shape, lay, job, part, blk, 4, 4, nosync=False)
    from plait.plan.memory import head_activation_bytes, transient_activation_bytes

    freed = head_activation_bytes(shape, 64, job) + transient_activation_bytes(
        shape, lay, job, part
    )
    assert full - root == pytest.approx(max(0, 3 * 4 * blk + seen["grads"] - freed), rel=0.05)


@pytest.mark.timeout(60)
def test_fsdp_fp32_reduce_accumulates_unsharded_fp32_grads_without_sync(tmp_path):
    """bf16 parameters under FSDP2 with MixedPrecisionPolicy(reduce_dtype=fp32), gradient sync
    off for a non-last micro-batch (KempnerForge's gradient accumulation): torch upcasts every
    unit's unsharded gradient to fp32 and keeps it to the last micro-batch, 4 bytes x the
    unsharded parameters, which the plan counts as that step's gradients. One gloo rank:
    unsharded sizes do not depend on the mesh size."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from plait.plan.memory import rank_memory
    from plait.plan.stages import rank_parts

    cfg = load_config("configs/gpt_small.yaml", ["data.seq_len=32", "train.global_batch=2"])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    before = {t.untyped_storage().data_ptr() for t in _live_tensors()}  # other tests' leftovers
    try:
        model = build_model(cfg, "cpu").to(torch.bfloat16)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        mesh = init_device_mesh("cpu", (1,))
        for block in model.layers.values():
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        model.set_requires_gradient_sync(False)
        tokens = torch.randint(0, 256, (2, 33))
        model.loss(model(tokens[:, :-1]), {"target": tokens[:, 1:]}).backward()
        fp32 = _storage_bytes((t for t in _live_tensors() if t.dtype == torch.float32), skip=before)
    finally:
        dist.destroy_process_group()

    shape = ModelShape.from_config(cfg)
    job = Job(2, 32, "bf16", precision="pure", reduce_dtype="fp32")
    lay = Layout(dp_shard=2, zero_stage=3, microbatches=2, grad_sync="last")
    part = rank_parts(shape, lay)[0]
    planned = rank_memory(shape, lay, job, part, 80 * 2**30).grads
    assert fp32 == pytest.approx(4 * shape.params, rel=0.01), (fp32, shape.params)
    assert planned == pytest.approx(fp32, rel=0.05), (planned, fp32)


def _keep(saved: list):
    """A pack hook that keeps each tensor autograd saves in ``saved``."""

    def pack(t):
        saved.append(t)
        return t

    return pack


def _saved_bytes_per_token(overrides: list[str], B: int, T: int, op: bool = False) -> float:
    """Bytes autograd saves for one block, per token: a 2-block model minus a 1-block one
    (``op``: under op-level checkpointing, whose saves happen out of sight of a pack hook)."""
    from plait.parallelize import apply_activation_checkpoint

    out = []
    for n_layers in (1, 2):
        cfg = load_config(
            None, [*overrides, f"model.n_layers={n_layers}", f"data.seq_len={T}",
                   f"train.global_batch={B}"],
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg, "cpu")
        tokens = torch.randint(0, 256, (B, T + 1))
        if op:
            apply_activation_checkpoint(model, "op", 1)
            out.append(_saved_during(model, tokens)[0])
            continue
        fixed = {p.untyped_storage().data_ptr() for p in model.parameters()}
        fixed |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        saved: list = []
        with torch.autograd.graph.saved_tensors_hooks(_keep(saved), lambda t: t):
            logits = model(tokens[:, :-1])
            model.loss(logits, {"target": tokens[:, 1:]})
        out.append(_storage_bytes(saved + [logits], skip=fixed))
    return (out[1] - out[0]) / (B * T)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "extra",
    [[], ["model.moe_top_k=4"], ["model.moe_shared=1"], ["model.moe_ffn_dim=256"]],
    ids=["top2", "top4", "shared", "wide"],
)
def test_moe_block_saves_what_the_plan_says(extra):
    """A MoE block keeps its routed rows (dispatched input, expert and gated outputs, the
    SwiGLU's four values per route), indices and gates, and the fp32 router's scores
    (plait.plan.memory.moe_mlp_bytes); under op-level checkpointing every other matmul of the
    experts' loop (moe_op_bytes): within 5% of a saved-tensor hook's count."""
    from plait.plan.memory import block_activation_bytes

    B, T = 4, 64
    overrides = ["model.preset=moe_tiny", *extra]
    shape = ModelShape.from_config(load_config(None, [*overrides, f"data.seq_len={T}"]))
    job = Job(B, T, "fp32", "adamw")
    for ckpt in (False, "op"):
        measured = _saved_bytes_per_token(overrides, B, T, op=bool(ckpt))
        planned = block_activation_bytes(shape, B * T, job, checkpointed=ckpt) / (B * T)
        assert planned == pytest.approx(measured, rel=0.05), (ckpt, planned, measured)

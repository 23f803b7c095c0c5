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


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the CI machine is shared, and these measure bytes, not speed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    # activations and the total peak of the step: within 15%
    assert mem.activations == pytest.approx(activations, rel=0.15), (mem.activations, activations)
    assert mem.total == pytest.approx(measured_peak, rel=0.15), (mem.total, measured_peak)


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
    assert planned == pytest.approx(measured, rel=0.15), (planned, measured)


@pytest.mark.timeout(60)
def test_ddp_buckets_are_one_more_copy_of_the_gradients(tmp_path):
    """The plan's 'DDP buckets' buffer: torch DDP (as plait's apply_ddp builds it: default
    gradient_as_bucket_view=False, 25 MB buckets) reduces flat bucket tensors that copy every gradient. A
    communication hook sees each bucket's flat buffer; their bytes must equal the gradients'.
    One gloo rank in this process is enough: the reducer buckets the same way at any size."""
    import torch.distributed as dist

    cfg = load_config("configs/gpt_small.yaml", ["data.seq_len=32", "train.global_batch=2"])
    model = build_model(cfg, "cpu")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # apply_ddp's settings
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
    finally:
        dist.destroy_process_group()

    shape, job = ModelShape.from_config(cfg), Job(2, 32, "fp32", "adamw")
    mem = plan_memory(shape, Layout(dp_shard=2), job, 80 * 2**30)
    assert sum(buffers.values()) == pytest.approx(grads, rel=0.05)
    assert mem.buffers == pytest.approx(sum(buffers.values()), rel=0.05)

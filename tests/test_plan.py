"""plait plan: each formula on hand-computed cases, the ZeRO paper's memory table, published
large-run step times, the search and the CLI. Pure arithmetic: no process, no tensor memory."""

from __future__ import annotations

import dataclasses

import pytest

from plait.cli import main
from plait.config import load_config
from plait.errors import ConfigError
from plait.models import model_summary
from plait.plan import (
    Job,
    Layout,
    ModelShape,
    bubble_fraction,
    comm,
    inflight_microbatches,
    make_cluster,
    plan_memory,
    search,
    step_time,
    zero_model_states,
)
from plait.plan.hardware import parse_bytes
from plait.plan.memory import (
    block_activation_bytes,
    head_activation_bytes,
    rank_memory,
    state_bytes,
)
from plait.plan.stages import rank_parts
from plait.plan.steptime import COLL_EFF

TINY = ModelShape(dim=64, n_layers=8, n_heads=4, n_kv_heads=4, ffn_dim=192, vocab_size=256)


# ---------------------------------------------------------------- formulas, by hand


def test_param_counts_and_flops_by_hand_and_against_the_meta_model():
    # block: wq,wo 64*64 each, wk,wv 64*64 each (kv = heads), 3 * 64*192, two norms of 64
    assert TINY.block_params == 4 * 64 * 64 + 3 * 64 * 192 + 2 * 64 == 53376
    assert TINY.params == 256 * 64 + 8 * 53376 + 256 * 64 + 64 == 459840
    # 6(N - embedding) + 12 L H Q T with T = 128
    assert TINY.flops_per_token(128) == 6 * (459840 - 16384) + 12 * 8 * 4 * 16 * 128
    for preset in ("tiny", "small", "1b"):
        cfg = load_config(None, [f"model.preset={preset}"])
        assert ModelShape.from_config(cfg).params == model_summary(cfg)["params"], preset


def test_collectives_alpha_beta():
    link = (1e-3, 1e9)  # 1 ms per hop, 1 GB/s
    assert comm.all_reduce(1e9, 4, link) == pytest.approx(2 * 3 * 1e-3 + 2 * 3 / 4 * 1.0)
    assert comm.reduce_scatter(1e9, 4, link) == pytest.approx(3e-3 + 0.75)
    assert comm.all_gather(1e9, 4, link) == comm.reduce_scatter(1e9, 4, link)
    assert comm.p2p(5e8, link) == pytest.approx(1e-3 + 0.5)
    assert comm.all_reduce(1e9, 1, link) == 0.0


def test_bubble_closed_forms():
    assert bubble_fraction("1F1B", 4, 8) == pytest.approx(3 / 11)  # (p-1)/(m+p-1)
    assert bubble_fraction("GPipe", 4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction("Interleaved1F1B", 4, 8, 2) == pytest.approx(3 / 19)  # (p-1)/(vm+p-1)
    assert bubble_fraction("InterleavedZeroBubble", 4, 8, 1) == pytest.approx(1 / 9)  # 1/3 of 3/8
    # torch's ZB-V order is not bubble-free: it leaves ZB-H1's third of the interleaved bubble
    assert bubble_fraction("ZBVZeroBubble", 4, 8, 2) == pytest.approx(1 / 17)  # ratio 3/48
    assert bubble_fraction("1F1B", 1, 8) == 0.0


def test_bubble_matches_the_simulated_torch_orders():
    """The plan's bubble against plait.pipeline.simulate run on the action orders torch 2.13
    executes (F = I = W, no comm), for every schedule over a grid of p, v, m."""
    from plait.pipeline.schedules import microbatch_problem
    from plait.pipeline.simulate import simulate
    from plait.plan.bubble import SCHEDULES

    n = 0
    for name in SCHEDULES:
        vs = (1,) if name in ("GPipe", "1F1B") else (2,) if "V" in name else (2, 3)
        for p in (2, 4):
            for v in vs:
                for m in range(p, 3 * p + 1):
                    if microbatch_problem(name, p, v, m):
                        continue
                    want = simulate(name, p, m, v).bubble
                    assert bubble_fraction(name, p, m, v) == pytest.approx(want, abs=1e-9), (
                        name, p, v, m)  # fmt: skip
                    n += 1
    assert n > 60


def test_inflight_closed_forms_match_the_simulated_torch_orders():
    """Where the plan uses closed forms (big pipelines; m a multiple of p, m >= 2p), they equal
    the peak of the simulated torch order on every rank; small pipelines are simulated."""
    from plait.pipeline.schedules import microbatch_problem
    from plait.pipeline.simulate import simulate
    from plait.plan.bubble import SCHEDULES, closed_inflight

    n = 0
    for name in SCHEDULES:
        vs = (1,) if name in ("GPipe", "1F1B") else (2,) if "V" in name else (2, 3)
        for p, v, m in ((p, v, k * p) for p in (2, 4, 8) for v in vs for k in (2, 3)):
            if microbatch_problem(name, p, v, m):
                continue
            sim = simulate(name, p, m, v)
            for r in range(p):
                assert closed_inflight(name, p, m, v, r) == pytest.approx(sim.peak_inflight(r)), (
                    name, p, v, m, r)  # fmt: skip
            n += 1
    assert n > 30
    # m not a multiple of p: torch's interleaved order holds more than Megatron's formula says
    assert inflight_microbatches("Interleaved1F1B", 4, 5, 2, rank=1) == 5.0
    assert closed_inflight("Interleaved1F1B", 4, 5, 2, rank=1) == 4.5


def test_inflight_microbatches():
    assert inflight_microbatches("1F1B", 4, 8) == 4
    assert inflight_microbatches("1F1B", 4, 8, rank=3) == 1
    assert inflight_microbatches("1F1B", 4, 2) == 2
    assert inflight_microbatches("GPipe", 4, 8) == 8
    assert inflight_microbatches("Interleaved1F1B", 4, 8, 2) == 4 + 3 / 2  # p + (p-1)/v


def test_state_bytes_per_engine_precision():
    assert state_bytes(Job(1, 1, "fp32", "adamw")) == (4, 4, 8)
    assert state_bytes(Job(1, 1, "bf16", "adamw", precision="mixed")) == (2, 2, 12)
    assert state_bytes(Job(1, 1, "fp32", "sgd")) == (4, 4, 0)
    assert state_bytes(Job(1, 1, "fp32", "sgd", momentum=0.9)) == (4, 4, 4)


def test_zero_paper_memory_table_exactly():
    """Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
    Models", arXiv 1910.02054, figure 1 / sec. 5: a 7.5B model on 64 GPUs with mixed-precision
    Adam (K = 12) needs 120 GB (DDP), 31.4 GB (P_os), 16.6 GB (P_os+g), 1.88 GB (P_os+g+p)."""
    got = [sum(zero_model_states(7.5e9, 64, s)) / 1e9 for s in range(4)]
    assert [round(g, 1) for g in got[:3]] == [120.0, 31.4, 16.6]
    assert round(got[3], 2) == 1.88
    # and through the per-rank planner: a one-block stand-in of 7.5e9 parameters, DeepSpeed
    shape = ModelShape(dim=1, n_layers=1, n_heads=1, n_kv_heads=1, ffn_dim=1, vocab_size=1)
    psi = shape.params
    job = Job(64, 1, "fp16", precision="mixed")
    for stage, want in enumerate((16 * psi, 4 * psi + 12 * psi / 64, 2 * psi + 14 * psi / 64)):
        lay = Layout(dp_shard=64, zero_stage=stage, dp_engine="deepspeed", microbatches=1)
        assert plan_memory(shape, lay, job, 80 * 2**30).states == pytest.approx(want)


def test_block_activation_bytes_by_hand():
    small = ModelShape(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=688, vocab_size=256)
    fp32 = Job(1, 1, "fp32")
    # 10 D + 4 F values in fp32, plus H log-sum-exp and 2 rstd in fp32, per token
    assert block_activation_bytes(small, 1, fp32) == (10 * 256 + 4 * 688) * 4 + (8 + 2) * 4
    # TP 2 with sequence parallel divides everything but the rstd values of the unsharded...
    got = block_activation_bytes(small, 1, fp32, tp=2, sp=True)
    assert got == (6 * 256 / 2 + (4 * 256 + 4 * 688) / 2) * 4 + (8 / 2 + 2) * 4
    assert block_activation_bytes(small, 1, fp32, checkpointed=True) == 256 * 4


def test_step_time_single_gpu_and_ddp_by_hand():
    cl1 = make_cluster("h100", 1)
    job = Job(global_batch=8, seq_len=128, dtype="bf16")
    t = step_time(TINY, Layout(), job, cl1, efficiency=0.5)
    assert t.compute_s == pytest.approx(8 * 128 * TINY.flops_per_token(128) / (989.4e12 * 0.5))
    assert t.bubble_s == t.tp_s == t.dp_s == 0.0
    # fp32 runs on the fp32 units (66.9 TFLOPS), MFU still against the bf16 peak
    t32 = step_time(TINY, Layout(), Job(8, 128, "fp32"), cl1, efficiency=0.5)
    assert t32.compute_s == pytest.approx(t.compute_s * 989.4 / 66.9)
    # DDP on 2 GPUs of one node: ring all-reduce of fp32 grads over NVLink (3 us, 450 GB/s at
    # NCCL's COLL_EFF of it)
    bw = 450e9 * COLL_EFF
    cl2 = make_cluster("h100", 2)
    t2 = step_time(TINY, Layout(dp_shard=2), job, cl2, efficiency=0.5)
    assert t2.dp_s == pytest.approx(2 * 3e-6 + TINY.params * 4 / bw)
    # ZeRO-3: reduce-scatter grads (fp32) once, all-gather bf16 params forward and backward
    lay3 = Layout(dp_shard=2, zero_stage=3, reshard_after_forward=True)
    t3 = step_time(TINY, lay3, job, cl2, efficiency=0.5)
    rs = 3e-6 + TINY.params * 4 / 2 / bw
    ag = 3e-6 + TINY.params * 2 / 2 / bw
    assert t3.dp_s == pytest.approx(rs + 2 * ag)
    # reshard_after_forward=auto keeps the last block and embedding/head gathered for backward
    auto = step_time(TINY, Layout(dp_shard=2, zero_stage=3), job, cl2, efficiency=0.5)
    rest = TINY.params - TINY.block_params - TINY.embed_params - TINY.head_params
    assert auto.dp_s == pytest.approx(rs + ag + 3e-6 + rest * 2 / 2 / bw)
    # full activation checkpointing recomputes each block's forward: + (2N_block + 4HQT)
    tc = step_time(TINY, Layout(activation_checkpoint="full"), job, cl1, efficiency=0.5)
    extra = 8 * (2 * TINY.block_params + 4 * 4 * 16 * 128)
    assert tc.hardware_flops_per_token == TINY.flops_per_token(128) + extra


def test_pipeline_time_includes_the_closed_form_bubble():
    cl = make_cluster("h100", 4)
    job = Job(global_batch=8, seq_len=128)
    lay = Layout(pp=4, microbatches=8, schedule="1F1B")
    t = step_time(TINY, lay, job, cl, efficiency=0.5)
    ideal = t.compute_s + t.pp_p2p_s
    assert t.bubble_s == pytest.approx(ideal * 3 / 8)  # ratio (p-1)/m


# ---------------------------------------------------------------- published runs

LLAMA3_405B = ModelShape(16384, 126, 128, 8, 53248, 128256)  # arXiv 2407.21783 table 3


@pytest.mark.parametrize(
    "gpus, dp, microbatches, mfu, tflops_per_gpu",
    [(16384, 128, 16, 0.41, 400e12), (8192, 64, 32, 0.43, 430e12)],
)
def test_llama3_405b_step_time(gpus, dp, microbatches, mfu, tflops_per_gpu):
    """Llama 3 405B, arXiv 2407.21783: table 4 gives TP 8, PP 16, DP 128 (64), seq 8192,
    16M tokens per batch, 400 (430) TFLOPs/GPU at 41% (43%) BF16 MFU on 16,384 (8,192) H100s;
    its introduction states 3.8e25 pre-training FLOPs on 15.6T tokens (6N per token). The
    published step time is tokens x (3.8e25 / 15.6e12) / (GPUs x TFLOPs/GPU); the plan's, from
    the stated layout and MFU, must be within 15% (it is 6% and 9% above: our FLOPs also count
    attention, 12·L·H·Q·T). Predicted from the default efficiency instead, the step comes out
    1.3-1.5x slower: the plan exposes TP collectives and assumes v=2, which the paper omits."""
    job = Job(global_batch=2048, seq_len=8192, dtype="bf16")
    lay = Layout(
        dp_shard=dp, tp=8, pp=16, sequence_parallel=True, schedule="Interleaved1F1B",
        virtual_stages=2, microbatches=microbatches, zero_stage=1,
    )  # fmt: skip
    cl = make_cluster("h100", gpus, interconnect="roce")
    published = job.tokens * (3.8e25 / 15.6e12) / (gpus * tflops_per_gpu)
    t = step_time(LLAMA3_405B, lay, job, cl, mfu=mfu)
    assert t.total_s == pytest.approx(published, rel=0.15), (t.total_s, published)


# arXiv 2104.04473 (Narayanan et al., Megatron-LM on 3072 A100s) table 1:
# (billions, heads, hidden, layers, tp, pp, GPUs, batch, achieved TFLOP/s per GPU, % of peak)
MEGATRON_TABLE1 = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 0.44),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 0.44),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 0.46),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 0.43),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 0.44),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 0.45),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 0.47),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 0.50),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 0.52),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 0.52),
]


def _megatron(row):
    bn, heads, h, layers, tp, pp, gpus, batch, tflops, util = row
    # GPT with a 4h MLP: a SwiGLU of width 8h/3 has the same 8h^2 weights; vocab 51200, seq 2048
    shape = ModelShape(h, layers, heads, heads, round(8 * h / 3), 51200)
    dp = gpus // (tp * pp)
    lay = Layout(dp_shard=dp, tp=tp, pp=pp, microbatches=batch // dp, activation_checkpoint="full")
    job = Job(batch, 2048, "fp16", precision="mixed")
    # the paper's eq. (sec. 5.1): F = 96 B s l h^2 (1 + s/6h + V/16lh), recomputation included
    flops = 96 * batch * 2048 * layers * h * h * (1 + 2048 / (6 * h) + 51200 / (16 * layers * h))
    return (
        shape,
        lay,
        job,
        make_cluster("a100", gpus, interconnect="ib-hdr"),
        flops / (gpus * tflops * 1e12),
    )


@pytest.mark.parametrize("row", MEGATRON_TABLE1, ids=[f"{r[0]}B" for r in MEGATRON_TABLE1])
def test_megatron_table1_step_time(row):
    """Every row of arXiv 2104.04473 table 1, from its layout and stated utilisation (which
    counts recomputed FLOPs, so ``hfu``): the step time within 15% of the published one."""
    shape, lay, job, cl, published = _megatron(row)
    assert shape.params / 1e9 == pytest.approx(row[0], rel=0.05)  # + untied head (V·h)
    t = step_time(shape, lay, job, cl, hfu=row[9])
    assert t.total_s == pytest.approx(published, rel=0.15)


# ---------------------------------------------------------------- search and CLI


def test_search_ranks_fitting_layouts_and_drops_the_rest():
    job = Job(global_batch=64, seq_len=2048, dtype="bf16")
    shape = ModelShape.from_config(load_config(None, ["model.preset=8b"]))
    cl = make_cluster("h100", 16)
    cands, tried = search(shape, job, cl)
    assert 0 < len(cands) < tried
    speeds = [c.time.tokens_per_s for c in cands]
    assert speeds == sorted(speeds, reverse=True)
    assert all(c.memory.fits and c.layout.gpus == 16 for c in cands)
    assert all(shape.n_kv_heads % c.layout.tp == 0 for c in cands)
    # 405B cannot train on one node of 80 GB GPUs in any layout
    none, tried = search(LLAMA3_405B, job, make_cluster("h100", 8))
    assert none == [] and tried > 0


def test_cli_plan_prints_breakdown_and_table(capsys):
    rc = main(["plan", "configs/gpt_tiny.yaml", "model.preset=1b", "data.seq_len=2048",
               "train.dtype=bf16", "parallel.zero_stage=0", "--gpus", "8", "--gpu", "h100",
               "--gpu-mem", "80GiB", "--interconnect", "ib", "--top", "3"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    for needle in ("parameters", "optimizer state", "activations", "temporary buffers",
                   "pipeline bubble", "tokens/s", "layouts fit; fastest first"):  # fmt: skip
        assert needle in out, needle


def test_cli_plan_errors_name_the_allowed_values(capsys):
    assert main(["plan", "configs/gpt_tiny.yaml", "--gpu", "h10"]) == 2
    err = capsys.readouterr().err
    assert "--gpu: 'h10'" in err and "h100" in err and "a100" in err
    assert main(["plan", "configs/gpt_tiny.yaml", "--mfu", "41"]) == 2
    assert "--mfu: 41.0 is not allowed" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--nodes"):
        make_cluster("h100", 16, nodes=3)
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("141GB") == 141 * 10**9


def test_pipeline_activations_and_fsdp_buffers_by_hand():
    job = Job(global_batch=8, seq_len=128, dtype="fp32")
    tokens = 8 * 128 // 4  # 4 micro-batches, one dp rank
    blk = block_activation_bytes(TINY, tokens, job)
    # a block's backward works on three (tokens, F) and two (tokens, D) gradients at once
    work = tokens * (3 * TINY.ffn_dim + 2 * TINY.dim) * 4
    # 1F1B over 2 stages: rank 0 holds 2 micro-batches of its 4 blocks (+ token ids)
    lay = Layout(pp=2, microbatches=4, schedule="1F1B")
    mem0 = rank_memory(TINY, lay, job, rank_parts(TINY, lay)[0], 80 * 2**30)
    assert mem0.activations == pytest.approx(2 * (4 * blk + tokens * 8) + work)
    # GPipe keeps all 4
    lay = Layout(pp=2, microbatches=4, schedule="GPipe")
    mem0 = rank_memory(TINY, lay, job, rank_parts(TINY, lay)[0], 80 * 2**30)
    assert mem0.activations == pytest.approx(4 * (4 * blk + tokens * 8) + work)
    # FSDP2 ZeRO-3 over 4 ranks: states / 4; the root unit (embedding + final norm + head)
    # gathered when backward starts, and in the last block's backward two blocks' fp32 weights,
    # one block's grads and the head's, less the head's activations and the loss's gradients
    # freed by then
    lay = Layout(dp_shard=4, zero_stage=3, microbatches=2, reshard_after_forward=True)
    mem = plan_memory(TINY, lay, job, 80 * 2**30)
    assert mem.states == pytest.approx(16 * TINY.params / 4)
    root = TINY.embed_params + TINY.head_params
    mb = 8 * 128 // (4 * 2)  # tokens of one micro-batch on one of 4 dp ranks
    head = head_activation_bytes(TINY, mb, job)
    loss_grads = mb * TINY.vocab_size * 2 * 4
    mid = 3 * 4 * TINY.block_params + 4 * TINY.head_params - head - loss_grads
    assert mid > 0  # TINY's blocks outweigh its head's activations
    assert mem.buffers == pytest.approx(4 * root + mid)
    # auto (the default): the last block held fwd->bwd, so one block less gathered in backward
    auto = plan_memory(TINY, dataclasses.replace(lay, reshard_after_forward="auto"), job, 2**40)
    blk = 4 * TINY.block_params
    assert auto.buffers == pytest.approx(4 * root + blk + max(0, mid + blk - 2 * blk))
    # a group of 2: every block held at half, both blocks gathered in backward again
    two = plan_memory(TINY, dataclasses.replace(lay, reshard_after_forward=2), job, 2**40)
    assert two.buffers == pytest.approx(4 * root + mid + 4 * TINY.n_layers * TINY.block_params / 2)
    # pp + FSDP2: PipelineStage holds the stage's params gathered and its grads unsharded
    lay = Layout(dp_shard=2, pp=2, zero_stage=3, microbatches=4)
    part = rank_parts(TINY, lay)[1]
    mem = rank_memory(TINY, lay, job, part, 80 * 2**30)
    # + its receive buffers: activations from stage 0 for each of the 4 micro-batches
    recv = 4 * tokens / 2 * TINY.dim * 4
    assert mem.buffers + mem.grads == pytest.approx(2 * 4 * part.params(TINY) + recv)


def test_cluster_links_nvlink_inside_a_node_network_across():
    cl = make_cluster("h100", 32, interconnect="ib")
    assert cl.nodes == 4
    assert cl.link(1, 8) == (3e-6, 450e9)  # tp 8 inside one node
    assert cl.link(8, 4) == (8e-6, 50e9)  # dp across 4 nodes: InfiniBand NDR per GPU
    # a group with k members per node crosses nodes on k NICs at once (NCCL: a ring channel
    # per NIC), capped by NVLink: dp under tp 2 has 4 per node, plain dp 8 (8 x 50 < 450)
    assert cl.link(2, 16) == (8e-6, 200e9)
    assert cl.link(1, 32) == (8e-6, 400e9)
    assert make_cluster("h100", 32, nvlink_bw=300e9).link(1, 32)[1] == 300e9
    assert make_cluster("a100", 8).gpu.peak_flops == 312e12


def test_engine_stage_and_offload_accounting_by_hand():
    job = Job(global_batch=8, seq_len=128, dtype="bf16")  # plait autocast: fp32 states 4+4+8
    psi = TINY.params

    def mem(**kw):
        return plan_memory(TINY, Layout(dp_shard=4, microbatches=2, **kw), job, 2**40)

    # torch ZeRO-1 (ZeroRedundancyOptimizer): states 4 + 4 + 8/4, bf16 weight copies (DDP's
    # buckets are the gradients: gradient_as_bucket_view)
    z1 = mem(zero_stage=1, zero_flat=False)
    assert z1.states == pytest.approx((4 + 4 + 8 / 4) * psi)
    assert z1.buffers == pytest.approx(2 * psi)
    # flat ZeRO-1 (the default): whole gradients while accumulating; the bf16 weight copies;
    # its reduce outputs (the whole tiny model is in flight: 4/4) appear as backward frees
    # activations, like gradients
    f1 = mem(zero_stage=1)
    assert f1.states == pytest.approx((4 + 4 + 8 / 4) * psi)
    assert f1.buffers == pytest.approx(2 * psi)
    assert f1.backward_transient == pytest.approx(1 * psi)
    # flat ZeRO-2 (default at fp32 only): 4 + (4 + 8)/4; staging + outputs of the buckets in flight
    f2 = mem(zero_stage=2, zero_flat=True)
    assert f2.states == pytest.approx((4 + 12 / 4) * psi)
    assert f2.buffers == pytest.approx(2 * psi)
    assert f2.backward_transient == pytest.approx((4 + 1) * psi)
    # torch ZeRO-2 is FSDP2 without resharding: everything / 4, all bf16 weights held fwd->bwd
    z2 = mem(zero_stage=2)
    # (+ the last block's all-gather output, kept to the next all-gather)
    assert z2.states == pytest.approx(16 * psi / 4)
    assert z2.buffers == pytest.approx(2 * psi + 2 * TINY.block_params)
    # DeepSpeed ZeRO-2 keeps the weights whole, and an fp32 partition of them beside its
    # moments (measured: tests/test_plan_peak.py); its reduce bucket is 5e8 elements, whole
    d2 = mem(zero_stage=2, dp_engine="deepspeed")
    assert d2.states == pytest.approx((4 + (4 + 8 + 4) / 4) * psi)
    assert d2.buffers == pytest.approx(5e8 * 4 + 2 * psi)  # + autocast's bf16 weight copies
    # FSDP2 units of 2 blocks (parallel.fsdp_unit_mb): auto keeps the last unit (2 blocks, +1
    # block of 2 bf16 bytes when backward starts); in the last unit's backward the gathered unit
    # (+2) and its fp32 grads (+4) per block more, less the head's freed activations
    from plait.plan.memory import kept_unsharded
    from plait.plan.stages import rank_parts

    unit2 = 2 * 4 * TINY.block_params / 2**20
    lay = Layout(dp_shard=4, zero_stage=3, fsdp_unit_mb=unit2)
    assert kept_unsharded(TINY, lay, rank_parts(TINY, lay)[0]) == 2 * TINY.block_params
    z3, z3u = mem(zero_stage=3), mem(zero_stage=3, fsdp_unit_mb=unit2)
    assert 2 * TINY.block_params < z3u.buffers - z3.buffers <= (2 + 2 + 4) * TINY.block_params
    # cpu_offload moves FSDP2's sharded states to host memory
    off = mem(zero_stage=3, cpu_offload=True)
    assert off.states == 0.0 and off.offloaded == pytest.approx(16 * psi / 4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.dp_engine=deepspeed", "parallel.zero_stage=2", "parallel.pp=2"],
        ["parallel.dp_engine=deepspeed", "parallel.zero_stage=2", "parallel.tp=2"],
        ["parallel.zero_stage=1", "parallel.pp=2"],
    ],
    ids=["deepspeed-pp", "deepspeed-tp-x-dp", "zero1-pp"],
)
def test_cli_plan_refuses_what_launch_refuses_with_its_message(overrides, capsys):
    from plait.mesh import ParallelDims
    from plait.preflight import check_supported

    cfg = load_config("configs/gpt_tiny.yaml", overrides)
    with pytest.raises(ConfigError) as launch:
        check_supported(cfg, ParallelDims.from_config(cfg, 8))
    assert main(["plan", "configs/gpt_tiny.yaml", *overrides, "--gpus", "8", "--top", "0"]) == 2
    assert str(launch.value) in capsys.readouterr().err


def test_cli_plan_header_names_the_users_figures_and_flags_override_presets(capsys):
    rc = main(["plan", "configs/gpt_tiny.yaml", "--gpus", "8", "--gpu-mem", "96GB", "--top", "0",
               "--peak-flops", "500e12", "--hbm-bw", "2e12"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "H100 SXM5 (96GB memory, 500 TFLOP/s, HBM 2 TB/s)" in out
    assert "80GB" not in out and "HFU" in out and "memory-bound" in out
    cl = make_cluster("h100", 8, peak_flops="500e12", hbm_bw=2e12, net_bw="25e9", nvlink_bw=3e11)
    assert cl.gpu.peak_flops == 500e12 and cl.gpu.fp8_flops == pytest.approx(1000e12, rel=0.01)
    assert cl.gpu.hbm_bytes_per_s == 2e12 and cl.net.bytes_per_s == 25e9
    assert cl.gpu.nvlink_bytes_per_s == 3e11
    with pytest.raises(ConfigError, match="--hbm-bw: 'fast'"):
        make_cluster("h100", 8, hbm_bw="fast")


def test_presets_carry_sources_and_fp8_rates():
    from plait.plan import GPUS

    assert {"a100", "a100-40g", "h100", "h100-pcie", "h200", "b200", "mi300x"} <= set(GPUS)
    for name, g in GPUS.items():
        assert g.source and g.peak_flops > g.fp32_flops > 0 and 0 < g.matmul_eff < 1, name
    assert GPUS["h100"].fp8_flops == pytest.approx(2 * GPUS["h100"].peak_flops, rel=1e-3)
    assert GPUS["a100"].fp8_flops == 0  # no fp8 units: fp8 jobs run at the bf16 rate


def test_roofline_fp8_compile_and_memory_bound_share():
    """fp8 speeds up the matmuls only; compile shrinks the memory-bound part only; the
    memory-bound share is larger on a GPU with more FLOPs per byte of HBM (H100 vs A100)."""
    shape = ModelShape.from_config(load_config(None, ["model.preset=8b"]))
    job = Job(8, 4096, "bf16")
    h100, a100 = make_cluster("h100", 1), make_cluster("a100", 1)
    t = step_time(shape, Layout(microbatches=8), job, h100)
    t8 = step_time(shape, Layout(microbatches=8), Job(8, 4096, "fp8"), h100)
    tc = step_time(shape, Layout(microbatches=8), Job(8, 4096, "bf16", compiled=True), h100)
    assert t8.matmul_s < 0.7 * t.matmul_s and t8.attention_s == t.attention_s
    assert tc.matmul_s == t.matmul_s and tc.memory_bound_s == pytest.approx(t.memory_bound_s / 2)
    ta = step_time(shape, Layout(microbatches=8), job, a100)
    assert t.memory_bound_s / t.compute_s > ta.memory_bound_s / ta.compute_s
    # op-level checkpointing re-runs the memory-bound forward and every other matmul (wk, wo,
    # w3: torchtitan's policy); full re-runs everything
    op = step_time(shape, Layout(microbatches=8, activation_checkpoint="op"), job, h100)
    full = step_time(shape, Layout(microbatches=8, activation_checkpoint="full"), job, h100)
    rerun = shape.dim * (shape.kv_dim + shape.dim + shape.ffn_dim) / shape.block_params
    assert (op.matmul_s - t.matmul_s) / (full.matmul_s - t.matmul_s) == pytest.approx(rerun)
    assert op.memory_bound_s > t.memory_bound_s
    assert full.matmul_s > op.matmul_s and full.hfu > full.mfu


def test_stage_cuts_are_plaits_own():
    """The plan prices the stages the run will have: parallel.pp_cuts when given, else
    plait.pipeline.split's balanced cuts (the embedding and head weigh on the end stages)."""
    from plait.plan.stages import stage_cuts

    lay = Layout(pp=2, microbatches=4, pp_cuts=(2,))
    assert [(p.blocks, p.embed, p.head) for p in rank_parts(TINY, lay)] == [
        (2, True, False),
        (6, False, True),
    ]
    heavy_ends = ModelShape(64, 8, 4, 4, 192, 50000)  # embedding and head ~ 3 blocks each
    cuts = stage_cuts(heavy_ends, Layout(pp=4, microbatches=4))
    assert cuts[0] < 2 and cuts[-1] > 6  # fewer blocks on the first and last stage
    # V schedules: rank 0 holds the first and the last stage
    parts = rank_parts(
        TINY, Layout(pp=2, schedule="ZBVZeroBubble", virtual_stages=2, microbatches=4)
    )
    assert parts[0].embed and parts[0].head and sum(p.blocks for p in parts) == 8
    cfg = load_config("configs/gpt_tiny.yaml", ["parallel.pp=2", "parallel.pp_cuts=[1]"])
    assert Layout.from_config(cfg, 2).pp_cuts == (1,)


def test_gemm_size_per_linear_under_tp():
    """Column-parallel linears keep the full input width: under tp 8 a Megatron 18.4B block's
    MLP runs at narrow side 2048, its attention linears at 768 (dim / tp)."""
    from plait.plan.steptime import block_gemm_size, gemm_size

    shape = ModelShape(6144, 40, 48, 48, 16384, 51200)
    assert block_gemm_size(shape, 1) == pytest.approx(gemm_size(6144))
    mixed = block_gemm_size(shape, 8)
    assert gemm_size(768) < mixed < gemm_size(2048)
    # FLOP-weighted harmonic mean: attention 4·D² weights at 768, MLP 3·D·F at 2048
    w_att, w_mlp = 4 * 6144**2, 3 * 6144 * 16384
    want = (w_att + w_mlp) / (w_att / gemm_size(768) + w_mlp / gemm_size(2048))
    assert mixed == pytest.approx(want)


def test_gradient_reduction_after_backward_is_exposed_whole():
    """Layout.grad_overlap=False (Megatron-LM 2021's local DDP) puts the whole all-reduce on
    the step; overlapped, only what exceeds the last backward is."""
    from plait.plan.hardware import make_cluster
    from plait.plan.steptime import step_time

    shape = ModelShape(2304, 24, 24, 24, 6144, 51200)
    job = Job(512, 2048, "fp16", precision="mixed")
    lay = Layout(dp_shard=32, microbatches=16, activation_checkpoint="full")
    cl = make_cluster("a100", 32, interconnect="ib-hdr")
    on = step_time(shape, lay, job, cl)
    off = step_time(shape, dataclasses.replace(lay, grad_overlap=False), job, cl)
    assert off.dp_s == on.dp_s > 0
    assert off.dp_exposed_s == pytest.approx(off.dp_s)
    assert on.dp_exposed_s < on.dp_s
    assert off.total_s - on.total_s == pytest.approx(off.dp_s - on.dp_exposed_s)


def test_every_plan_command_in_the_docs_runs(capsys):
    """The `plait plan` examples of README and docs/ are what users paste first: each one plans
    (a layout launch would refuse fails here, as plan refuses it too)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).parent.parent
    text = "".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = [
        line
        for b in blocks
        for line in b.replace("\\\n", " ").splitlines()
        if line.startswith("plait plan ")
    ]
    assert len(cmds) >= 3, cmds
    for cmd in cmds:
        argv = shlex.split(cmd)[1:] + ["--top", "0"]
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0, (cmd, out.err[-500:])


def test_tied_embeddings_count_the_matrix_once_and_its_matmul_still():
    """A tied head (published Llama 3.2 3B row) shares the embedding's V x D weights: memory
    counts them once, FLOPs still run the head's matmul."""
    untied = ModelShape(3072, 28, 24, 8, 8192, 128256)
    tied = dataclasses.replace(untied, tied_embeddings=True, head_params=None)
    assert untied.params - tied.params == 128256 * 3072
    assert tied.head_matmul_params == untied.head_params
    assert tied.flops_per_token(4096) == untied.flops_per_token(4096)

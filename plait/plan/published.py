"""Published training runs the planner is checked against, each row with its source.

Two sets: ``TUNED`` (the rows the step-time constants of plait.plan.hardware were fitted to)
and ``HELD_OUT`` (torchtitan's own tables, kept aside as an independent check and never fitted
to). tests/test_plan_published.py holds every row; README's plan section prints the table.

Each row is the published model shape, GPU, layout, batch, sequence length and number format,
and what was published: the step time (given, or tokens/s/GPU turned into one: global tokens /
(GPUs x tokens/s/GPU)) and, where given, peak memory per GPU. Where a source leaves a setting
out, the row says what is assumed (``note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.plan.shapes import Job, Layout, ModelShape

MEGATRON_2021 = (
    "Narayanan et al. 2021, Efficient Large-Scale Language Model Training on GPU Clusters Using "
    "Megatron-LM, arXiv 2104.04473 table 1 (A100 80GB, Selene: HDR InfiniBand)"
)
NEMO_2409 = (
    "NVIDIA NeMo Framework 24.09 performance summary, pre-training at FP8 on DGX-H100: "
    "https://docs.nvidia.com/nemo-framework/user-guide/24.09/performance/performance_summary.html"
)
LLAMA3 = "Llama 3 Herd of Models, arXiv 2407.21783 tables 4 and sec. 3.3 (16K H100, RoCE)"
KEMPNER = (
    "KempnerForge MFU benchmark report 2026-04-05 (8 nodes x 4 H200 141GB, InfiniBand), "
    "github.com/KempnerInstitute/KempnerForge benchmarks/mfu_scaling/mfu_scaling_2026-04-05.md"
)
TORCHTITAN_A100 = (
    "torchtitan docs/performance.md (Llama 3/2 on 64 A100 80GB, FSDP2), "
    "github.com/pytorch/torchtitan docs/performance.md (2024)"
)
TORCHTITAN_H100 = (
    "torchtitan docs/performance.md table 1 (Llama 3.1 8B, 8 H100 96GB HBM2e Grand Teton, FSDP)"
    ", github.com/pytorch/torchtitan/blob/main/docs/performance.md"
)
TORCHTITAN_H100_SCALE = (
    "torchtitan benchmarks/llama3_h100_202412_torchtitan.md tables 3 and 4 (Grand Teton H100 "
    "96GB HBM2e, 500 W, 400 Gb/s RDMA per GPU; memory is the logged max_reserved)"
)


@dataclass(frozen=True)
class Run:
    name: str
    source: str
    gpu: str  # plait.plan.hardware preset
    gpus: int
    shape: ModelShape
    layout: Layout
    job: Job
    step_s: float  # published (or derived from published tokens/s/GPU or TFLOP/s)
    mem_gib: float | None = None  # published peak memory per GPU, GiB
    #: what the source's memory figure measures: torch.cuda.max_memory_allocated (live tensors,
    #: what the plan counts) or max_memory_reserved (the caching allocator's segments: the
    #: allocated peak plus fragmentation, so at least the plan's figure when the plan is right)
    mem_metric: str = "max_memory_allocated"
    interconnect: str = "ib"
    gpus_per_node: int = 8
    gpu_mem: str | None = None
    note: str = ""
    tags: tuple[str, ...] = field(default=())
    overrides: tuple[tuple[str, str], ...] = ()  # make_cluster flags: peak_flops, hbm_bw, ...


def _step_from_tps(job: Job, gpus: int, tokens_per_s_per_gpu: float) -> float:
    return job.tokens / (gpus * tokens_per_s_per_gpu)


# ---------------------------------------------------------------- Megatron-LM 2021, table 1
# (billions, heads, hidden, layers, tp, pp, GPUs, batch, achieved TFLOP/s per GPU)
_MEGATRON = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]


def _megatron_rows() -> list[Run]:
    rows = []
    for bn, heads, h, layers, tp, pp, gpus, batch, tflops in _MEGATRON:
        # GPT with a 4h GELU MLP: a SwiGLU of width 8h/3 has the same 8h^2 weights; V 51200
        shape = ModelShape(h, layers, heads, heads, round(8 * h / 3), 51200)
        dp = gpus // (tp * pp)
        lay = Layout(
            dp_shard=dp, tp=tp, pp=pp, microbatches=batch // dp, activation_checkpoint="full",
            sequence_parallel=False, grad_overlap=False,
        )  # fmt: skip
        job = Job(batch, 2048, "fp16", precision="mixed")
        # the paper's eq. (sec. 5.1): F = 96 B s l h^2 (1 + s/6h + V/16lh), recompute included
        f = 96 * batch * 2048 * layers * h * h * (1 + 2048 / (6 * h) + 51200 / (16 * layers * h))
        rows.append(
            Run(
                f"Megatron GPT {bn}B", MEGATRON_2021, "a100", gpus, shape, lay, job,
                f / (gpus * tflops * 1e12), interconnect="ib-hdr",
                note="1F1B, micro-batch 1, full recompute, fp16 (the paper's settings); the gradient "
                "all-reduce after backward (Megatron-LM's local DDP then: not overlapped)",
                tags=("a100", "fp16", "tp" if tp > 1 else "dp", "pp" if pp > 1 else "",
                      "3d" if tp > 1 and pp > 1 and dp > 1 else ""),
            )
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------- NeMo 24.09, FP8 on H100
# (name, gpus, gbs, mbs, seq, tp, pp, vp, tokens/s/GPU, shape)
def _gpt3(h, layers, heads):
    return ModelShape(h, layers, heads, heads, round(8 * h / 3), 50304)


_NEMO = [
    ("GPT3-5B", 64, 2048, 4, 2048, 1, 1, 1, 23406, _gpt3(4096, 24, 32)),
    ("GPT3-20B", 64, 256, 2, 2048, 2, 1, 1, 5851, _gpt3(6144, 44, 48)),
    ("GPT3-175B", 128, 256, 1, 2048, 4, 8, 6, 716, _gpt3(12288, 96, 96)),
    ("GPT3-175B", 512, 2048, 2, 2048, 4, 8, 6, 825, _gpt3(12288, 96, 96)),
    ("LLAMA2-7B", 8, 128, 1, 4096, 1, 1, 1, 16934, ModelShape(4096, 32, 32, 32, 11008, 32000)),
    ("LLAMA2-13B", 16, 128, 1, 4096, 1, 4, 10, 8715, ModelShape(5120, 40, 40, 40, 13824, 32000)),
    ("LLAMA2-70B", 64, 128, 1, 4096, 4, 4, 20, 1728, ModelShape(8192, 80, 64, 8, 28672, 32000)),
]


def _nemo_rows() -> list[Run]:
    rows = []
    for name, gpus, gbs, mbs, seq, tp, pp, vp, tps, shape in _NEMO:
        dp = gpus // (tp * pp)
        lay = Layout(
            dp_shard=dp, tp=tp, pp=pp, sequence_parallel=tp > 1,
            schedule="Interleaved1F1B" if vp > 1 else "1F1B", virtual_stages=vp,
            microbatches=gbs // (dp * mbs), zero_stage=1,
        )  # fmt: skip
        job = Job(gbs, seq, "fp8", precision="mixed", compiled=True)
        rows.append(
            Run(
                f"NeMo {name} {gpus}xH100 fp8", NEMO_2409, "h100", gpus, shape, lay, job,
                _step_from_tps(job, gpus, tps),
                note="Megatron-core distributed optimizer (ZeRO-1), no recompute assumed, "
                "Transformer Engine fp8 linears; its fused kernels priced as compiled",
                tags=("h100", "fp8", "tp" if tp > 1 else "dp", "pp" if pp > 1 else "",
                      "3d" if tp > 1 and pp > 1 and dp > 1 else ""),
            )
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------- Llama 3 405B
LLAMA3_405B = ModelShape(16384, 126, 128, 8, 53248, 128256)  # arXiv 2407.21783 table 3


def _llama3_rows() -> list[Run]:
    rows = []
    for gpus, dp, m, tflops in ((16384, 128, 16, 400e12), (8192, 64, 32, 430e12)):
        job = Job(2048, 8192, "bf16", precision="mixed")
        lay = Layout(
            dp_shard=dp, tp=8, pp=16, sequence_parallel=True, schedule="Interleaved1F1B",
            virtual_stages=2, microbatches=m, zero_stage=1,
        )  # fmt: skip
        rows.append(
            Run(
                f"Llama 3 405B {gpus}xH100", LLAMA3, "h100", gpus, LLAMA3_405B, lay, job,
                job.tokens * (3.8e25 / 15.6e12) / (gpus * tflops), interconnect="roce",
                note="step = tokens x (3.8e25 / 15.6e12 FLOPs per token) / (GPUs x TFLOP/s); "
                "v=2 assumed",
                tags=("h100", "bf16", "tp", "pp", "3d"),
            )
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------- KempnerForge on H200
_KF_SHAPES = {
    "7B": ModelShape(4096, 32, 32, 8, 14336, 128256),  # 8.03B
    "13B": ModelShape(5120, 40, 40, 8, 17920, 128256),  # 14.84B
    "70B": ModelShape(8192, 80, 64, 8, 28672, 128256),  # 70.55B
}
# The reports name "InfiniBand (NDR 400Gbps)" between the 4-GPU nodes but not how many ports a
# node has. Fitted to the multi-node rows below (the one number fitted per source): 25 GB/s per
# GPU, one 400 Gb/s port per two GPUs. A port per GPU (50 GB/s, the "ib" preset) plans the
# 32-GPU FSDP8 x TP4 rows at 0.68-0.86 of their published step time, one port per node (12.5)
# at 1.17-1.91; 25 GB/s puts all seven multi-node rows within 0.81-0.99.
KEMPNER_NET_BW = 25e9
# (gpus, model, fsdp, tp, tokens/s, memory GiB, step s, batch per dp rank, grad accum,
# compiled): batch and compile from benchmarks/mfu_scaling/mfu_bench.sh, which ran the table
_KEMPNER = [
    (1, "7B", 1, 1, 10471, 80.7, 3.13, 2, 4, True),
    (2, "7B", 2, 1, 18728, 62.4, 3.50, 2, 4, True),
    (2, "7B", 1, 2, 13163, 57.8, 2.49, 4, 2, True),
    (4, "7B", 4, 1, 38983, 61.1, 3.36, 4, 2, True),
    (4, "7B", 1, 4, 25135, 39.4, 1.30, 4, 2, True),
    (4, "7B", 2, 2, 25980, 45.9, 2.52, 4, 2, True),
    (8, "7B", 2, 4, 44299, 32.7, 1.48, 4, 2, True),
    (8, "13B", 8, 1, 35405, 88.5, 14.81, 4, 4, False),
    (8, "13B", 2, 4, 27345, 45.1, 4.79, 4, 4, True),
    (16, "7B", 4, 4, 82988, 29.4, 1.58, 4, 2, True),
    (16, "13B", 4, 4, 53814, 39.2, 4.87, 4, 4, True),
    (32, "7B", 8, 4, 155917, 27.6, 1.68, 4, 2, True),
    (32, "13B", 8, 4, 104309, 36.3, 5.03, 4, 4, True),
    (32, "70B", 8, 4, 17657, 93.2, 14.85, 2, 4, True),
]


def _kempner_rows() -> list[Run]:
    rows = []
    for gpus, model, fsdp, tp, _tps, mem, step, bs, ga, compiled in _KEMPNER:
        job = Job(
            bs * ga * fsdp, 4096, "bf16", precision="pure", compiled=compiled, fp32_loss=False,
            reduce_dtype="fp32",
        )  # fmt: skip
        # FSDP2 wraps every multi-GPU run, over a one-rank dp mesh under tp alone
        # (kempnerforge/distributed/setup.py); one GPU runs unwrapped
        lay = Layout(
            dp_shard=fsdp, tp=tp, sequence_parallel=tp > 1, microbatches=ga,
            zero_stage=3 if gpus > 1 else 0, activation_checkpoint="full", loss_parallel=False,
            grad_sync="last",
        )  # fmt: skip
        par = "+".join(
            x for x in (f"FSDP{fsdp}" if fsdp > 1 else "", f"TP{tp}" if tp > 1 else "") if x
        )
        rows.append(
            Run(
                f"KempnerForge {model} {par or '1 GPU'} {gpus}xH200", KEMPNER, "h200", gpus,
                _KF_SHAPES[model], lay, job, step, mem_gib=mem, gpus_per_node=4,
                overrides=(("net_bw", KEMPNER_NET_BW),),
                note="bf16 parameters and AdamW state (model.to(bf16)), full AC, torch.compile "
                "(not the 13B FSDP8 run), cross-entropy on bf16 logits gathered whole on each "
                "tp rank; FSDP2 reduce_dtype fp32 with gradient sync on the last micro-batch "
                "only; memory is max_memory_allocated / 2^30 (kempnerforge/metrics/memory.py)",
                tags=("h200", "bf16", "fsdp" if fsdp > 1 else "", "tp" if tp > 1 else ""),
            )
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------- held out: torchtitan
_TT_SHAPES = {
    "llama3-8B": ModelShape(4096, 32, 32, 8, 14336, 128256),
    "llama3-70B": ModelShape(8192, 80, 64, 8, 28672, 128256),
    "llama2-13B": ModelShape(5120, 40, 40, 40, 13824, 32000),
    "llama2-70B": ModelShape(8192, 80, 64, 8, 28672, 32000),
    "llama3.1-405B": LLAMA3_405B,
}
# (model, local batch, seq, AC, tokens/s/GPU) on 64 A100 80GB, FSDP2, bf16
_TT_A100 = [
    ("llama3-8B", 1, 8192, "selective", 2904),
    ("llama3-8B", 1, 8192, "op", 2973),
    ("llama3-70B", 1, 8192, "full", 331),
    ("llama2-13B", 2, 4096, "none", 2162),
    ("llama2-13B", 2, 4096, "selective", 1914),
    ("llama2-13B", 2, 4096, "op", 1904),
    ("llama2-70B", 1, 4096, "op", 355),
    ("llama2-70B", 2, 4096, "full", 353),
]
# (compile, fp8, tokens/s/GPU, memory GiB): Llama 3.1 8B, 8 H100, FSDP, local batch 2, SAC
_TT_H100 = [(False, False, 5762, 82.4), (True, False, 6667, 77.0), (True, True, 8532, 76.8)]


def _torchtitan_rows() -> list[Run]:
    rows = []
    for model, lbs, seq, ac, tps in _TT_A100:
        job = Job(64 * lbs, seq, "bf16", reduce_dtype="fp32")
        every = 2 if ac == "selective" else 1  # torchtitan's selective layer: every 2nd block
        lay = Layout(dp_shard=64, zero_stage=3, activation_checkpoint=ac, checkpoint_every=every)
        rows.append(
            Run(
                f"torchtitan {model} 64xA100 AC {ac}", TORCHTITAN_A100, "a100", 64,
                _TT_SHAPES[model], lay, job, _step_from_tps(job, 64, tps),
                note="FSDP2 (reshard after forward), bf16 autocast-style mixed precision",
                tags=("a100", "fsdp", "bf16", "held-out"),
            )
        )  # fmt: skip
    for compiled, fp8, tps, mem in _TT_H100:
        job = Job(16, 8192, "fp8" if fp8 else "bf16", compiled=compiled, reduce_dtype="fp32")
        lay = Layout(dp_shard=8, zero_stage=3, activation_checkpoint="op")
        what = "FSDP" + (" + compile" if compiled else "") + (" + float8" if fp8 else "")
        rows.append(
            Run(
                f"torchtitan llama3.1-8B 8xH100 {what}", TORCHTITAN_H100, "h100", 8,
                _TT_SHAPES["llama3-8B"], lay, job, _step_from_tps(job, 8, tps), mem_gib=mem,
                mem_metric="max_memory_reserved",
                gpu_mem="96GB", overrides=(("hbm_bw", "2.4e12"),),
                note="Grand Teton H100: 96 GB HBM2e at 2.4 TB/s, 500 W (slower than the SXM5 "
                "preset); selective op AC; memory is torchtitan's logged max_reserved "
                "(torchtitan/components/metrics.py)",
                tags=("h100", "fsdp", "fp8" if fp8 else "bf16", "held-out"),
            )
        )  # fmt: skip
    # table 3: 128 GPUs, FSDP, local batch 2; table 4: Llama 3.1 70B, FSDP 32 x TP 8, local
    # batch 16, full AC, compile + float8 (seq 8192: torchtitan's llama3 default)
    scale = [
        (128, "FSDP", False, False, 5605, 67.0),
        (128, "FSDP + compile", True, False, 6514, 62.0),
        (128, "FSDP + compile + float8", True, True, 8380, 61.8),
    ]
    for gpus, what, compiled, fp8, tps, mem in scale:
        job = Job(2 * gpus, 8192, "fp8" if fp8 else "bf16", compiled=compiled, reduce_dtype="fp32")
        lay = Layout(dp_shard=gpus, zero_stage=3, activation_checkpoint="op")
        rows.append(_titan_h100(f"torchtitan llama3.1-8B {gpus}xH100 {what}", gpus, "llama3-8B",
                                lay, job, tps, mem))  # fmt: skip
    job = Job(512, 8192, "fp8", compiled=True, reduce_dtype="fp32")
    lay = Layout(
        dp_shard=32, tp=8, sequence_parallel=True, zero_stage=3, activation_checkpoint="full"
    )
    rows.append(_titan_h100("torchtitan llama3.1-70B 256xH100 FSDP32+TP8 float8", 256,
                            "llama3-70B", lay, job, 829, 71.9))  # fmt: skip
    # table 5: Llama 3.1 405B, FSDP 8 x TP 8 x PP 8, 1F1B, local batch 32 in 8 micro-batches
    # (torchtitan's default: one per stage), async TP (not modelled)
    job = Job(256, 8192, "fp8", compiled=True, reduce_dtype="fp32")
    lay = Layout(
        dp_shard=8, tp=8, pp=8, sequence_parallel=True, microbatches=8, zero_stage=3,
        activation_checkpoint="full",
    )  # fmt: skip
    rows.append(_titan_h100("torchtitan llama3.1-405B 512xH100 FSDP8+TP8+PP8 1F1B float8", 512,
                            "llama3.1-405B", lay, job, 100, 82.5))  # fmt: skip
    return rows


def _titan_h100(name, gpus, model, lay, job, tps, mem) -> Run:
    return Run(
        name, TORCHTITAN_H100_SCALE, "h100", gpus, _TT_SHAPES[model], lay, job,
        _step_from_tps(job, gpus, tps), mem_gib=mem, mem_metric="max_memory_reserved",
        interconnect="roce", gpu_mem="96GB", overrides=(("hbm_bw", "2.4e12"),),
        note="Grand Teton H100 at 500 W; selective op AC (8B) or full AC (70B); loss parallel "
        "under TP",
        tags=("h100", "fsdp", "fp8" if job.dtype == "fp8" else "bf16", "held-out"),
    )  # fmt: skip


# ---------------------------------------------------------------- torchtune on one A100
TORCHTUNE = (
    "torchtune README, 'Optimization flags' table (commit 1814feb, 2024-11-18): Llama 3.2 3B, "
    "full_finetune_single_device, batch 2, max sequence length 4096, bf16, A100; "
    "github.com/pytorch/torchtune"
)
LLAMA32_3B = ModelShape(3072, 28, 24, 8, 8192, 128256, tied_embeddings=True)  # 3.21B


def _torchtune_rows() -> list[Run]:
    """The table's "+ Packed Dataset" row: the first with every sequence 4096 tokens long (the
    baseline's unpacked lengths vary) and the last before compile, chunked cross-entropy and
    checkpointing (which the rows after it add, one at a time)."""
    job = Job(2, 4096, "bf16", precision="pure")  # model and AdamW state in bf16
    return [
        Run(
            "torchtune Llama 3.2 3B 1xA100 packed", TORCHTUNE, "a100", 1, LLAMA32_3B, Layout(),
            job, job.tokens / 7075, mem_gib=60.0,
            note="peak memory active (active_bytes.all.peak: allocated blocks); 7075 tokens/s; "
            "torch AdamW (8-bit AdamW and the optimizer in backward are later rows); logits "
            "upcast to fp32 by the model (TransformerDecoder.forward: .float())",
            tags=("a100", "bf16", "memory"),
        )
    ]  # fmt: skip


TUNED: list[Run] = (
    _megatron_rows() + _nemo_rows() + _llama3_rows() + _kempner_rows() + _torchtune_rows()
)
HELD_OUT: list[Run] = _torchtitan_rows()


@dataclass(frozen=True)
class Check:
    run: Run
    step_s: float  # planned
    mem_gib: float  # planned peak of the heaviest rank

    @property
    def step_ratio(self) -> float:
        return self.step_s / self.run.step_s

    @property
    def mem_ratio(self) -> float | None:
        return None if self.run.mem_gib is None else self.mem_gib / self.run.mem_gib


def check(run: Run) -> Check:
    """The plan of ``run`` at default settings (no --mfu, no --efficiency)."""
    from plait.plan.hardware import make_cluster
    from plait.plan.memory import plan_memory
    from plait.plan.steptime import step_time

    cl = make_cluster(
        run.gpu, run.gpus, interconnect=run.interconnect, gpu_mem=run.gpu_mem,
        gpus_per_node=run.gpus_per_node, **dict(run.overrides),
    )  # fmt: skip
    t = step_time(run.shape, run.layout, run.job, cl)
    mem = plan_memory(run.shape, run.layout, run.job, cl.gpu.mem_bytes)
    return Check(run, t.total_s, mem.total / 2**30)


def table(rows: list[Run]) -> str:
    """Markdown table of rows, planned / published."""
    out = [
        "| run | GPUs | layout | published step s | planned / published step | "
        "published GiB (metric) | planned / published memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = check(r)
        metric = r.mem_metric.removeprefix("max_memory_")
        mem = "-" if c.mem_ratio is None else f"{r.mem_gib:.1f} ({metric}) | {c.mem_ratio:.2f}"
        mem = mem if c.mem_ratio is not None else "- | -"
        out.append(
            f"| {r.name} | {r.gpus} | {r.layout.short()} | {r.step_s:.3g} | "
            f"{c.step_ratio:.2f} | {mem} |"
        )
    return "\n".join(out)

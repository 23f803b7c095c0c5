"""Plain-text reports of a plan: the memory breakdown, the step-time breakdown, the search table."""

from __future__ import annotations

from plait.plan.hardware import Cluster
from plait.plan.memory import RESERVE, Memory, block_activation_bytes
from plait.plan.search import Candidate
from plait.plan.shapes import Job, Layout, ModelShape, microbatch_tokens
from plait.plan.steptime import StepTime


def gib(b: float) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    if b < 1024**3:
        return f"{b / 1024**2:,.2f} MiB"
    return f"{b / 1024**3:,.2f} GiB"


def format_plan(
    shape: ModelShape, layout: Layout, job: Job, cluster: Cluster, mem: Memory, t: StepTime
) -> str:
    g = cluster.gpu
    mb_tokens = microbatch_tokens(layout, job)
    per_block = [
        block_activation_bytes(
            shape,
            mb_tokens,
            job,
            layout.tp,
            layout.sequence_parallel,
            checkpointed=c,
            cp=layout.cp,
        )
        for c in (False, True)
    ]
    lines = [
        f"model: gpt {shape.params / 1e9:.3f}B params (dim {shape.dim}, {shape.n_layers} layers, "
        f"{shape.n_heads} heads / {shape.n_kv_heads} kv, ffn {shape.ffn_dim}, vocab {shape.vocab_size})",
        f"job: {job.global_batch} x {job.seq_len} tokens per step, {job.dtype} compute, {job.optimizer}, "
        f"{job.precision} precision",
        f"cluster: {cluster.gpus} x {g.name} in {cluster.nodes} node(s) of {cluster.gpus_per_node}, "
        f"{cluster.net.name}",
        f"layout: {layout.short()}, {layout.microbatches} micro-batch(es), ZeRO {layout.zero_stage} "
        f"({layout.dp_engine}), activation checkpoint {layout.activation_checkpoint}"
        + (", cpu offload" if layout.cpu_offload else ""),
        "",
        f"memory per rank (heaviest: pipeline rank {mem.rank})",
        f"  parameters        {gib(mem.params):>14}",
        f"  gradients         {gib(mem.grads):>14}",
        f"  optimizer state   {gib(mem.optimizer):>14}",
        f"  activations       {gib(mem.activations):>14}  (one block, one micro-batch of "
        f"{mb_tokens} tokens: {gib(per_block[0])}, checkpointed {gib(per_block[1])})",
        f"  temporary buffers {gib(mem.buffers):>14}",
        f"  total             {gib(mem.total):>14}  of {gib(mem.device_bytes)} "
        f"({gib(mem.usable)} usable after a {RESERVE:.0%} reserve): "
        + ("fits" if mem.fits else "DOES NOT FIT"),
    ]
    if mem.offloaded:
        lines.append(f"  in host memory    {gib(mem.offloaded):>14}")
    lines += [f"  note: {n}" for n in mem.notes]
    lines += [
        "",
        "step time (slowest pipeline rank)",
        f"  compute           {t.compute_s:>10.4f} s"
        + (
            f"  (matmul {t.matmul_s:.4f}, attention {t.attention_s:.4f}, "
            f"memory-bound {t.memory_bound_s:.4f}{', compiled' if job.compiled else ''})"
            if t.matmul_s
            else ""
        ),
        f"  TP collectives    {t.tp_s:>10.4f} s  (not overlapped)",
        f"  PP send/recv      {t.pp_p2p_s:>10.4f} s  (not overlapped)",
        *(
            [
                f"  CP kv all-gather  {t.cp_s:>10.4f} s  (+ reduce-scatter in backward; not overlapped)"
            ]
            if layout.cp > 1
            else []
        ),
        *(
            [
                f"  EP all-to-all     {t.ep_s:>10.4f} s  (+ the experts' gradient all-reduce; "
                "not overlapped)"
            ]
            if t.ep_s
            else []
        ),
        f"  pipeline bubble   {t.bubble_s:>10.4f} s",
        f"  DP communication  {t.dp_s:>10.4f} s  ({t.dp_exposed_s:.4f} s exposed)",
        f"  optimizer update  {t.optimizer_s:>10.4f} s",
        f"  step              {t.total_s:>10.4f} s  -> {t.tokens_per_s:,.0f} tokens/s, "
        f"MFU {t.mfu:.1%}, HFU {t.hfu:.1%} (6N + 12·L·H·Q·T = {t.model_flops_per_token:.3e} "
        f"FLOPs/token; with recomputation {t.hardware_flops_per_token:.3e})",
    ]
    return "\n".join(lines)


def format_table(cands: list[Candidate], tried: int, top: int = 10) -> str:
    head = (
        f"{'#':>3}  {'dp rep x shard':>14} {'tp':>3} {'pp':>3} {'schedule':<18} {'mb':>4} "
        f"{'zero':>4} {'ckpt':<5} {'mem GiB':>8} {'step s':>9} {'tokens/s':>12} {'MFU':>6}"
    )
    rows = [f"{len(cands)} of {tried} layouts fit; fastest first", head]
    for i, c in enumerate(cands[:top], 1):
        lay, sched = c.layout, "-"
        if lay.pp > 1:
            sched = lay.schedule + (f" v{lay.v}" if lay.v > 1 else "")
        rows.append(
            f"{i:>3}  {f'{lay.dp_replicate} x {lay.dp_shard}':>14} {lay.tp:>3} {lay.pp:>3} "
            f"{sched:<18} {lay.microbatches:>4} {lay.zero_stage:>4} {lay.activation_checkpoint:<5} "
            f"{c.memory.total / 1024**3:>8.1f} {c.time.total_s:>9.3f} {c.time.tokens_per_s:>12,.0f} "
            f"{c.time.mfu:>6.1%}"
        )
    return "\n".join(rows)

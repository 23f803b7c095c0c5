"""Memory per rank: model states (parameters, gradients, optimizer state) by engine / ZeRO
stage / dtype / offload, activations by block and pipeline schedule, and temporary buffers.

Model states follow the ZeRO formulas of :mod:`plait.zero` (arXiv 1910.02054, sec. 3 and 5).
``precision="mixed"`` is that paper's accounting (fp16/bf16 weights and grads, fp32 master +
Adam moments: K = 12); ``"autocast"`` is plait's own trainer (fp32 weights, grads and moments,
bf16/fp16 only inside autocast: 4 + 4 + 8).

Activations are counted from what autograd saves for backward in plait's gpt block (checked
against a saved-tensor hook measurement in tests/test_plan_measure.py), per token:
  norm regions  6·D   (two RMSNorms: input, normalised, weighted output)      /t with SP
  attention     4·D   (q, k, v after RoPE / GQA repeat, attention output) + H fp32 log-sum-exp
  SwiGLU        4·F   (w1 out, silu out, w3 out, product)
  + 2 fp32 rstd values, all divided by the TP degree t as in Korthikanti et al.
(arXiv 2205.05198 sec. 4); a checkpointed block keeps only its input D (/t with SP).

Context parallel (cp ranks, plait.context_parallel): a rank holds T / cp tokens of each sequence,
so every term above is divided by cp, except the keys and values attention saves: gathered over
the whole sequence, 2·D/t per token of the full sequence (2·D·cp/t per local token instead of
2·D/t), plus the boolean (T/cp, T) mask by global position that attention saves per block and
micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from plait.pipeline.split import stage_ids
from plait.plan.bubble import inflight_microbatches
from plait.plan.shapes import Job, Layout, ModelShape, microbatch_tokens, unit_blocks, uses_flat
from plait.plan.stages import RankPart, rank_parts
from plait.zero import bytes_per_param, zero_formula

RESERVE = 0.10  # of device memory kept free: CUDA context, NCCL buffers, allocator fragmentation
#: the float64 buffer plait.grad_norm casts each gradient into, chunk by chunk (its CHUNK
#: elements x 8 bytes), live while the optimizer step takes the norm, after backward
NORM_BUFFER = (1 << 18) * 8


# ------------------------------------------------------------------------- model states


def state_bytes(job: Job) -> tuple[int, int, int]:
    """Bytes per parameter of (weights, gradients, optimizer state incl. fp32 master)."""
    if job.precision == "pure":  # everything in 16 bits: moments too (torch.optim keeps p's dtype)
        _, _, k = bytes_per_param(job.optimizer, job.momentum, False)
        return 2, 2, k // 2
    return bytes_per_param(job.optimizer, job.momentum, job.precision == "mixed")


def zero_model_states(psi: float, nd: int, stage: int, k: int = 12, pb: int = 2, gb: int = 2):
    """(params, grads, optimizer) bytes per rank for ZeRO stage 0-3 (plait.zero)."""
    f = zero_formula(stage, float(psi), nd, (pb, gb, k))
    return f["params"], f["grads"], f["optim"]


# ------------------------------------------------------------------------- activations


def block_activation_bytes(
    shape: ModelShape,
    tokens: int,
    job: Job,
    tp: int = 1,
    sp: bool = False,
    checkpointed=False,
    *,
    cp: int = 1,
    gathered: bool = False,
) -> float:
    """Bytes one block saves for backward for ``tokens`` tokens (this rank's: T / cp of each
    sequence under context parallel) of one micro-batch (see the module docstring for the
    terms). ``checkpointed``: True (or "full"/"selective") keeps only the block's input; "op"
    (torchtitan's policy: every other matmul) keeps the input, the outputs of wq, wv,
    attention (with its fp32 log-sum-exp), w1 and w2, and recomputes wk, wo and w3 with the
    memory-bound ops."""
    s = tp if sp else 1
    if checkpointed == "op":
        d, kv, f = shape.dim, shape.kv_dim, shape.ffn_dim
        # under context parallel too: the gathered keys/values and the mask are not saved (the
        # all-gather is not in the policy's save list: backward gathers again, plait.plan.steptime)
        per_token = (2 * d / s + (2 * d + kv + f) / tp) * job.act_bytes
        if shape.n_experts:  # w1 (F) and w2 (D) outputs give way to the experts' saved half
            frac = shape.moe_layers_per_block
            per_token += frac * (moe_op_bytes(shape, job, tp) - (f / tp + d / s) * job.act_bytes)
        return tokens * (per_token + shape.n_heads / tp * 4)
    if checkpointed:
        return tokens * shape.dim / s * job.act_bytes
    d, f = shape.dim, shape.ffn_dim
    # q and the attention output for this rank's tokens; keys and values gathered over cp
    attn = 2 * d + 2 * d * cp
    # the norms' input and normalised output (/t with SP), and the attention's and the MLP's
    # inputs: whole when torch's SP saves them all-gathered (``gathered``)
    norms = 4 * d / s + 2 * d / (1 if gathered else s)
    per_token = (norms + (attn + 4 * f) / tp) * job.act_bytes + (shape.n_heads / tp + 2) * 4
    if shape.n_experts:  # MoE blocks save their routed rows instead of a dense SwiGLU
        frac = shape.moe_layers_per_block
        per_token += frac * (moe_mlp_bytes(shape, job, tp) - 4 * f / tp * job.act_bytes)
    return tokens * per_token + (cp_mask_bytes(job.seq_len, cp) if cp > 1 else 0.0)


def moe_op_bytes(shape: ModelShape, job: Job, tp: int) -> float:
    """Bytes a MoE feed-forward keeps per token under op-level checkpointing: every other
    matmul's output, counted across the experts' loop (w1, w3, w2 per expert), averages H/t +
    D/2 per route; the router's fp32 logits (its matmul is saved); a shared expert one of its
    two H-wide outputs. Measured on moe_tiny within 3% (tests/test_plan_measure.py)."""
    k, h = shape.top_k, shape.expert_dim
    rows = k * (h / tp + shape.dim / 2) + shape.n_shared * h / tp
    return rows * job.act_bytes + 4 * shape.n_experts


def moe_mlp_bytes(shape: ModelShape, job: Job, tp: int) -> float:
    """Bytes a MoE feed-forward saves per token (plait.models.moe, measured on moe_tiny in
    tests/test_plan_measure.py): per route (k of them) the dispatched input row, the expert's
    output and the gated output (3·D, whole on every tp rank) and the SwiGLU's four (H/t)
    values, plus 28 bytes of int64 indices and fp32 gates; the fp32 router's logits, scores
    and pick (3·E x 4 bytes); a shared expert's four values per unit of width. Uniform routing:
    under ep a rank runs as many rows as its tokens route."""
    k, h, e = shape.top_k, shape.expert_dim, shape.n_experts
    rows = k * (3 * shape.dim + 4 * h / tp) + 4 * shape.n_shared * h / tp
    return rows * job.act_bytes + 28 * k + 12 * e


def cp_mask_bytes(seq_len: int, cp: int) -> float:
    """The boolean (T / cp, T) global-position mask context-parallel attention saves."""
    return seq_len / cp * seq_len


def cp_kv_gather_bytes(shape: ModelShape, job: Job, sequences: int, tp: int, cp: int) -> float:
    """Per-rank ring bytes one block's context-parallel attention moves in forward + backward:
    keys and values (B, K/t, T, E) all-gathered over cp in forward, their gradients
    reduce-scattered in backward; each moves (cp-1)/cp of the gathered tensor."""
    if cp == 1:
        return 0.0
    gathered = sequences * job.seq_len * 2 * shape.kv_dim / tp * job.act_bytes
    return 2 * (cp - 1) / cp * gathered


def _vocab(shape: ModelShape, layout_tp: int, loss_parallel: bool) -> float:
    return shape.vocab_size / (layout_tp if loss_parallel else 1)


def head_activation_bytes(
    shape: ModelShape,
    tokens: int,
    job: Job,
    tp: int = 1,
    sp=False,
    loss_parallel=True,
    gathered: bool = False,
):
    """Final norm and output projection inputs, the logits the caller holds through backward,
    and the log-softmax output cross-entropy saves: fp32 when the loss upcasts (plait's), the
    fp32 copy itself is not saved (measured: tests/test_plan_measure.py). Vocab-parallel: V/t."""
    s = tp if sp else 1
    v = _vocab(shape, tp, loss_parallel)
    lsm = 4 if job.fp32_loss else job.act_bytes
    norm = (2 * shape.dim / s + shape.dim / (1 if gathered else s)) * job.act_bytes
    return tokens * (norm + 4 + v * (job.act_bytes + lsm))


def transient_activation_bytes(shape: ModelShape, layout: Layout, job: Job, part: RankPart):
    """Live only for a moment, not saved for backward, on top of the saved activations: at the
    start of backward the loss's two (tokens, V/t) gradients (the log-softmax's output gradient
    and its input gradient: fp32 under an fp32 loss); later, once the head's activations are
    freed, one block's backward: its recomputed activations under checkpointing and the
    gradients it works on. Whichever is larger (the head's activations counted as freed)."""
    tokens = microbatch_tokens(layout, job)
    g = layout.sp_saves_gathered
    recompute = loss_grads = head = 0.0
    if layout.activation_checkpoint != "none":
        recompute = block_activation_bytes(
            shape, tokens, job, layout.tp, layout.sequence_parallel, cp=layout.cp, gathered=g
        )
    if layout.activation_checkpoint == "selective" and (part.blocks - 1) % layout.checkpoint_every:
        # the last checkpointed block (plait checkpoints blocks 0, k, 2k, ...) recomputes once
        # a full block after it has been freed: no more than that block held
        recompute = 0.0
    if layout.activation_checkpoint == "op":  # what the block saved is part of its recompute
        recompute -= block_activation_bytes(
            shape, tokens, job, layout.tp, layout.sequence_parallel, "op", cp=layout.cp
        )
    if part.head:
        lsm = 4 if job.fp32_loss else job.act_bytes
        # torch's loss_parallel backward (DTensor's _nll_loss_backward) fills a third
        # (tokens, V/t) tensor, zeros_like then scattered into, beside the two
        n = 3 if layout.tp > 1 and layout.loss_parallel else 2
        loss_grads = tokens * _vocab(shape, layout.tp, layout.loss_parallel) * n * lsm
        head = head_activation_bytes(
            shape, tokens, job, layout.tp, layout.sequence_parallel, layout.loss_parallel, g
        )
    # a block's backward works on the gradients of its widest intermediates: SwiGLU's three
    # (tokens, F/t) (the product's two inputs, the silu's) and two (tokens, D) (measured:
    # tests/test_plan_peak.py)
    s = layout.tp if layout.sequence_parallel else 1
    work = tokens * (3 * shape.ffn_dim / layout.tp + 2 * shape.dim / s) * job.act_bytes
    return max(recompute + work - head, loss_grads)


def saved_per_microbatch(shape: ModelShape, layout: Layout, job: Job, part: RankPart) -> float:
    """What one micro-batch's forward through this rank's part (blocks, head, embedding) saves
    for backward."""
    tokens = microbatch_tokens(layout, job)
    tp, sp = layout.tp, layout.sequence_parallel
    ac = layout.activation_checkpoint
    n_ckpt = (
        part.blocks
        if ac in ("full", "op")
        else math.ceil(part.blocks / layout.checkpoint_every)
        if ac == "selective"
        else 0
    )
    g = layout.sp_saves_gathered
    full = block_activation_bytes(shape, tokens, job, tp, sp, cp=layout.cp, gathered=g)
    ckpt = block_activation_bytes(
        shape, tokens, job, tp, sp, checkpointed="op" if ac == "op" else True, cp=layout.cp
    )
    out = n_ckpt * ckpt + (part.blocks - n_ckpt) * full
    # the head's and the embedding's saved tensors are per micro-batch too (GPipe's last
    # stage holds every micro-batch's logits and log-softmax until its backward)
    if part.head:
        out += head_activation_bytes(shape, tokens, job, tp, sp, layout.loss_parallel, g)
    if part.embed:
        out += tokens * 8  # int64 token ids saved by the embedding
    return out


def activation_bytes(shape: ModelShape, layout: Layout, job: Job, part: RankPart) -> float:
    """Peak activation bytes of one pipeline rank: in-flight micro-batches x its blocks, the
    head and embedding, plus the transients (:func:`transient_activation_bytes`)."""
    per_mb = saved_per_microbatch(shape, layout, job, part)
    inflight = inflight_microbatches(
        layout.schedule, layout.pp, layout.microbatches, layout.v, part.rank
    )
    return inflight * per_mb + transient_activation_bytes(shape, layout, job, part)


# ------------------------------------------------------------------------- per rank


@dataclass
class Memory:
    """Bytes on one rank (``offloaded``: in host memory instead)."""

    rank: int
    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    device_bytes: int
    offloaded: float = 0.0
    notes: list[str] = field(default_factory=list)
    grads_with_activations: bool = True  # False: grads only exist once activations are freed
    #: activations still live once every gradient exists, when that is fewer than all of
    #: them (a pipeline rank that runs every forward before its first backward); None: all
    late_activations: float | None = None
    #: bytes besides params, optimizer state and gradients live in the optimizer step, once
    #: backward has freed the activations and FSDP's unsharded parameters: the buffers that
    #: persist (DeepSpeed's, fairscale's buckets) and the step's own (the norm's float64 chunk)
    after_backward: float = 0.0
    #: bytes that only appear as backward frees activations, like the trainer's gradients:
    #: flat ZeRO's whole gradients of the buckets in flight (staged as their blocks finish)
    backward_transient: float = 0.0

    @property
    def states(self) -> float:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> float:
        """Peak: everything at once, except that with one micro-batch per step the trainer's
        gradients (set to None after each update) grow only while backward frees activations;
        or the optimizer step's own buffers with the gradients, after backward."""
        if self.late_activations is not None:
            backward = max(self.activations, self.grads + self.late_activations)
        else:
            backward = self.activations + (self.grads if self.grads_with_activations else 0.0)
        backward = max(backward, self.grads + self.backward_transient)
        step = self.grads + self.after_backward
        return self.params + self.optimizer + max(self.buffers + backward, step)

    @property
    def usable(self) -> float:
        return self.device_bytes * (1 - RESERVE)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def kept_unsharded(shape: ModelShape, layout: Layout, part: RankPart) -> float:
    """ZeRO-3 on FSDP2: block parameters per rank held (unsharded, or in a smaller group) from
    forward to backward by ``parallel.reshard_after_forward`` (plait.ddp.fsdp.block_reshard):
    auto keeps each stage's last unit (``fsdp_unit_mb``: one or more blocks), false every block,
    a group size g a 1/g shard of every block, true none. The root unit (embedding, head) is
    counted apart by :func:`rank_memory`."""
    policy, tp = layout.reshard_after_forward, layout.tp
    block = shape.block_params - (shape.expert_block_params if split_experts(shape, layout) else 0)
    blocks = part.blocks * block / tp
    if policy is True or not part.blocks:
        return 0.0
    if policy is False:
        return blocks
    if policy == "auto":  # the last unit (one or more blocks: parallel.fsdp_unit_mb)
        return unit_blocks(shape, layout, part.blocks)[1] * block / tp
    return blocks / policy


def split_experts(shape: ModelShape, layout: Layout) -> bool:
    """Experts split over ep or tp are plain tensors the data-parallel engines leave out
    (plait.expert_parallel); at ep = tp = 1 they are ordinary parameters."""
    return bool(shape.expert_block_params) and (layout.ep > 1 or layout.tp > 1)


def zero3_unsharded_bytes(
    shape: ModelShape,
    layout: Layout,
    job: Job,
    part: RankPart,
    blk: float,
    cb: int,
    gb: int,
    nosync: bool,
) -> float:
    """FSDP2 ZeRO-3 (plait's units: each block, and the root: embedding, final norm, head):
    the most held unsharded at once. When backward starts (at the head, every activation
    alive) the root unit is gathered and the blocks ``reshard_after_forward`` keeps are still
    held (:func:`kept_unsharded`); in the last block's backward the block is gathered again
    unless kept, the next one is prefetched, that block's unsharded gradients exist and the
    head's wait for the root's reduce-scatter, but by then the head's activations and the
    loss's gradients are freed: whichever moment holds more (measured:
    tests/test_plan_measure.py, tests/test_plan_peak.py)."""
    policy = layout.reshard_after_forward
    head = (shape.head_params if part.head else 0) / layout.tp
    root = (shape.embed_params if part.embed else 0) / layout.tp + head
    kept = kept_unsharded(shape, layout, part)
    start = cb * (root + kept)
    if not part.blocks:
        return start
    per_unit = unit_blocks(shape, layout, part.blocks)[0]  # parallel.fsdp_unit_mb
    # in the last unit's backward: that unit gathered again (unless kept) and the one before
    # it prefetched (none when a single unit holds every block)
    prefetch = 1 if part.blocks > per_unit else 0
    gathered = 0 if policy is False else prefetch if policy == "auto" else 1 + prefetch
    blk = blk * per_unit
    mid = cb * gathered * blk + (0.0 if nosync else gb * blk + cb * head)
    freed = 0.0
    if part.head:
        tokens = microbatch_tokens(layout, job)
        g = layout.sp_saves_gathered
        freed = head_activation_bytes(
            shape, tokens, job, layout.tp, layout.sequence_parallel, layout.loss_parallel, g
        ) + transient_activation_bytes(shape, layout, job, part)
    return start + max(0.0, mid - freed)


def pipeline_recv_bytes(shape: ModelShape, layout: Layout, job: Job, part: RankPart) -> float:
    """torch's PipelineStage allocates a receive buffer per micro-batch for each stage input
    (activations from the previous stage, gradients from the next) at the first step and keeps
    them for the run: one (micro-batch tokens, D) tensor each."""
    if layout.pp == 1:
        return 0.0
    n_stages = layout.pp * layout.v
    ids = stage_ids(layout.schedule, part.rank, layout.pp, layout.v)
    inputs = sum(int(s > 0) + int(s < n_stages - 1) for s in ids)
    tokens = microbatch_tokens(layout, job)
    s = layout.tp if layout.sequence_parallel else 1
    return inputs * layout.microbatches * tokens * shape.dim / s * job.act_bytes


def rank_memory(
    shape: ModelShape, layout: Layout, job: Job, part: RankPart, device_bytes: int
) -> Memory:
    psi_rank = part.params(shape) / layout.tp  # norms are replicated under TP; ignored (tiny)
    # split experts: this rank's 1/(ep x tp) slice, whole (unsharded by ZeRO), apart from the
    # dense parameters the engine handles
    ex_block = shape.expert_block_params / layout.tp if split_experts(shape, layout) else 0.0
    experts = part.blocks * ex_block / layout.ep
    psi_rank -= part.blocks * ex_block
    # ZeRO shards over dp_shard (x cp: FSDP2 shards over both); dp_replicate holds replicas
    ns = layout.dp_shard * layout.cp
    pb, gb, ob = state_bytes(job)
    stage, engine = layout.zero_stage, layout.dp_engine
    flat = uses_flat(layout, job)
    if flat:  # replicated parameters, then ZeRO-2's sharded terms (ZeRO-1 after its reduction)
        params, grads, opt = zero_model_states(psi_rank, ns, 2, ob, pb, gb)
    elif engine == "torch" and stage == 2:  # FSDP2 keeps parameters sharded at rest
        params, grads, opt = pb * psi_rank / ns, gb * psi_rank / ns, ob * psi_rank / ns
    else:
        params, grads, opt = zero_model_states(psi_rank, ns, stage, ob, pb, gb)
    notes, offloaded = [], 0.0
    if layout.cpu_offload:
        offloaded += opt
        opt = 0.0
        if stage >= 2 and engine == "torch":  # FSDP2 CPUOffloadPolicy: sharded params + grads
            offloaded += params + grads
            params = grads = 0.0
        notes.append(
            "cpu_offload: optimizer state (FSDP2: also sharded params/grads) in host memory"
        )

    cb = job.act_bytes  # dtype parameters are gathered / cast to for compute
    blk = shape.block_params / layout.tp - ex_block  # FSDP2's unit: the block's dense params
    buffers = persistent = 0.0
    # torch DDP's gradients are views into its all-reduce buckets (plait.ddp.ddp:
    # gradient_as_bucket_view=True), which live for the whole run: no copy, never freed
    ddp_buckets = layout.dp_cp > 1 and stage <= 1 and engine == "torch" and not flat
    transient = 0.0
    if flat:
        # whole gradients of the buckets in flight (staging + output piece, two at once), staged
        # as backward reaches them, so as activations are freed (measured: tests/test_plan_peak.py);
        # ZeRO-1 holds whole gradients while accumulating
        inflight = min(2 * layout.zero_bucket_mb * 2**20 / gb, psi_rank)
        if stage == 1 and layout.microbatches > 1:  # .grad freed as it is staged
            grads = gb * psi_rank
            transient = gb * inflight / ns
            notes.append("flat ZeRO-1: whole gradients held while accumulating")
        else:
            transient = gb * inflight * (1 + 1 / ns)
            notes.append(
                f"flat ZeRO: two {layout.zero_bucket_mb:g} MB gradient buckets in flight, "
                "as backward frees activations"
            )
    if layout.dp_cp > 1 and engine == "fairscale" and stage <= 1:
        persistent += gb * psi_rank  # fairscale's buckets copy the gradients
        notes.append("fairscale buckets: one more copy of the gradients")
    if ns > 1 and engine == "torch" and stage == 2 and not flat:
        # unsharded for the whole of forward + backward, and the last unit's all-gather output,
        # which FSDP2 keeps (its all_gather_state) until the next unit's all-gather, in backward
        buffers += cb * psi_rank + cb * blk
        notes.append("FSDP2 reshard_after_forward=False: all unsharded params held fwd->bwd")
    fsdp = ns > 1 and engine == "torch" and stage >= 2 and not flat
    # gradients FSDP2 accumulates unsharded between syncs: upcast to the reduce dtype after the
    # first micro-batch (torch's FSDPParam.to_accumulated_grad_if_needed), else compute dtype
    acc_b = 4 if job.reduce_dtype == "fp32" else cb
    nosync = (
        engine == "torch" and stage == 3 and layout.grad_sync == "last" and layout.microbatches > 1
    )
    if fsdp and layout.pp > 1:
        # torch's PipelineStage turns FSDP2's gradient sync and reshard-after-backward off
        # until the last micro-batch: the stage's parameters stay gathered and its gradients
        # accumulate unsharded across the whole step (they are the step's gradients: each
        # unit's sharded ones replace them at the last reduce-scatter)
        buffers += cb * psi_rank if stage == 3 else 0.0  # ZeRO-2: counted above
        grads = acc_b * psi_rank
        notes.append("pp + FSDP2: the stage's unsharded params and grads live across the step")
    elif fsdp and stage == 3:
        buffers += zero3_unsharded_bytes(shape, layout, job, part, blk, cb, gb, nosync)
        notes.append(
            "FSDP2 units unsharded: the root (embedding + head) and the blocks "
            f"reshard_after_forward={layout.reshard_after_forward} keeps from forward to "
            "backward; in backward the next block prefetched, one block's and the head's grads"
        )
    if nosync:
        # the step's gradients are these unsharded ones (also under fully_shard over a one-rank
        # mesh: KempnerForge's tp-only runs); each unit's sharded gradient replaces its
        # unsharded one at the last reduce-scatter (zero_grad(set_to_none) frees the last)
        grads = acc_b * psi_rank
        notes.append(
            f"gradient sync on the last micro-batch only: all unsharded gradients held "
            f"({acc_b} bytes each) across the step"
        )
    if layout.pp > 1:
        persistent += pipeline_recv_bytes(shape, layout, job, part)
        notes.append("pipeline receive buffers: one per micro-batch and stage input")
    step_copy = 0.0
    if layout.pp > 1 and layout.dp_cp > 1 and stage == 0:
        step_copy = gb * psi_rank  # the stage's flattened gradients, averaged over dp
    if ns > 1 and engine == "deepspeed" and stage >= 1:
        # DeepSpeed's reduce bucket (its ipg buffer under contiguous_gradients, the default) is
        # allocated whole, whatever the model's size: 5e8 elements by default
        persistent += layout.ds_reduce_bucket * gb
        notes.append("DeepSpeed reduce bucket (reduce_bucket_size: 5e8 elements by default)")
        if job.precision != "mixed":  # its fp32 partition of the weights, even over fp32 ones
            opt += 4 * psi_rank / ns
    if ns > 1 and engine == "deepspeed" and stage == 3:
        # gathered parameters stay resident up to stage3_max_live_parameters (1e9) while
        # they are reused within stage3_max_reuse_distance (1e9): for models below that, every
        # parameter stays gathered through forward and backward; DeepSpeed's own estimator
        # (estimate_zero3_model_states_mem_needs) counts at least 4 bytes x the largest layer
        largest = max(shape.embed_params, shape.head_params, shape.block_params) / layout.tp
        buffers += max(min(layout.ds_max_live, psi_rank) * pb, 4 * largest)
        notes.append("DeepSpeed ZeRO-3: parameters gathered up to stage3_max_live_parameters")
    fsdp_cast = engine == "torch" and stage >= 2 and not flat  # FSDP2 gathers 16-bit copies
    if job.precision == "autocast" and cb < pb and not fsdp_cast:
        buffers += cb * psi_rank  # autocast's cast weight copies, saved for backward
        notes.append("autocast: bf16/fp16 copies of the weights live through backward")
    if experts:
        params, grads, opt = params + pb * experts, grads + gb * experts, opt + ob * experts
        if job.precision == "autocast" and cb < pb:
            buffers += cb * experts  # outside FSDP2's policy: autocast casts them
        notes.append(
            f"experts: {experts / 1e6:,.1f}M params per rank (1/{layout.ep} of them, 1/"
            f"{layout.tp} of each), whole: no data-parallel engine shards them"
        )
    # gradients outlive a step's activations with accumulation or DeepSpeed's persistent buffers
    # (DeepSpeed ZeRO-3's flat gradient partition is allocated once, for the run)
    ds3 = engine == "deepspeed" and stage == 3
    overlap = layout.microbatches > 1 or ds3 or ddp_buckets
    if not overlap:
        notes.append("one micro-batch: gradients grow as activations free; total counts the larger")
    activations, late = activation_bytes(shape, layout, job, part), None
    inflight = inflight_microbatches(
        layout.schedule, layout.pp, layout.microbatches, layout.v, part.rank
    )
    if layout.pp > 1 and layout.microbatches <= inflight:
        # every forward runs before the first backward (GPipe, or no more micro-batches than
        # stages): the trainer's gradients (None after each update) only exist once the first
        # micro-batch's backward has freed its activations, and no forward refills them
        late = activations - saved_per_microbatch(shape, layout, job, part)
    return Memory(
        part.rank, params, grads, opt, activations,
        buffers + persistent,
        device_bytes, offloaded, notes, overlap, late_activations=late,
        after_backward=persistent + max(step_copy, NORM_BUFFER if psi_rank else 0.0),
        backward_transient=transient,
    )  # fmt: skip


def plan_memory(shape: ModelShape, layout: Layout, job: Job, device_bytes: int) -> Memory:
    """The heaviest rank (first or last pipeline rank)."""
    mems = [
        rank_memory(shape, layout, job, p, device_bytes)
        for p in rank_parts(shape, layout, job.seq_len)
    ]
    return max(mems, key=lambda m: m.total)

"""The model and the job as numbers: parameter counts per block / embedding / head, FLOPs per
token, and the layout (how ranks split the work). From a config, the model says its sizes
(``PlaitModel.plan_dims``) and its counts (its modules, built on meta: no memory); a shape
written by hand (a paper's table) is a Llama-style decoder of those sizes."""

from __future__ import annotations

from dataclasses import dataclass

from plait.config import Config
from plait.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    #: parameters of one block, of the modules before the first block (embedding) and after the
    #: last (final norm + head): the model's own counts (from_config); None: those of a
    #: Llama-style decoder of the sizes above (q, k, v, o + SwiGLU + two RMSNorms; untied head)
    block_params: int | None = None
    embed_params: int | None = None
    head_params: int | None = None
    #: parameters one token runs through per block (mixture of experts: its top-k experts);
    #: None: all of block_params. FLOPs use it, memory uses block_params
    active_block_params: int | None = None
    #: routed experts' parameters per block (mean; part of block_params): under expert or
    #: tensor parallel each rank keeps a 1/(ep x tp) slice that no data-parallel engine shards
    expert_block_params: int = 0
    n_experts: int = 0  # routed experts per MoE block (0: dense)
    expert_dim: int = 0  # each routed expert's SwiGLU width (split over tp)
    top_k: int = 0  # routed experts per token
    n_shared: int = 0  # shared experts (each of expert_dim), every token

    @property
    def moe_layers_per_block(self) -> float:
        """Share of blocks that are MoE (DeepSeek-V3 keeps its first ones dense)."""
        one = self.n_experts * 3 * self.dim * self.expert_dim
        return self.expert_block_params / one if one else 0.0

    #: the head reuses the embedding matrix (Llama 3.2 1B/3B, GPT-2): its weight is counted once,
    #: with the embedding, but its V x D matmul still runs. plait's own models untie the head
    #: (plait.models.hf), so only published rows set it
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        d, kv = self.dim, self.kv_dim
        llama = {
            "block_params": d * (2 * d + 2 * kv) + 3 * d * self.ffn_dim + 2 * d,
            "embed_params": self.vocab_size * d,
            "head_params": d if self.tied_embeddings else self.vocab_size * d + d,
        }
        for k, v in llama.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)  # frozen: set once, here

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def flop_block_params(self) -> int:
        """Weights one token runs through per block (a mixture of experts: its top-k)."""
        return self.active_block_params or self.block_params

    @property
    def head_matmul_params(self) -> int:
        """Weights the head's matmul runs through per token (the shared embedding when tied)."""
        return self.head_params + (self.vocab_size * self.dim if self.tied_embeddings else 0)

    @property
    def params(self) -> int:
        return self.embed_params + self.n_layers * self.block_params + self.head_params

    def attn_flops_per_token(self, seq_len: int) -> float:
        """12·H·Q·T per layer: QK^T and AV, forward + backward, counted over the full
        (non-causal) square, as torchtitan and PaLM's MFU do."""
        return 12 * self.n_heads * self.head_dim * seq_len

    def flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per token, plait's MFU convention (docs/design.md, torchtitan's
        ``get_nparams_and_flops``): 6·(N − embedding) + 12·L·H·Q·T."""
        block = self.flop_block_params
        dense = self.params - self.embed_params - self.n_layers * (self.block_params - block)
        dense += self.head_matmul_params - self.head_params
        return 6 * dense + self.n_layers * self.attn_flops_per_token(seq_len)

    @staticmethod
    def from_config(cfg: Config) -> ModelShape:
        from plait.models import build_model, param_count  # torch: only to plan from a config
        from plait.models.moe import Experts, MoE

        model = build_model(cfg)  # meta: sizes and counts, no memory
        dims = model.plan_dims()
        if dims is None:
            raise ConfigError(
                f"model.name: {cfg.model.name!r} ({type(model).__name__}) is not planned; "
                "plait plan models decoders that give their sizes: gpt and the Llama-style "
                "hf models (LlamaForCausalLM, MistralForCausalLM); the seed models fit anywhere"
            )

        def params(names: list[str]) -> int:
            return sum(param_count(getattr(model, n)) for n in names)

        embed, head = params(model.pre_modules()), params(model.post_modules())
        n = len(model.layers)
        blocks = param_count(model) - embed - head
        # the mean block (a mixture of experts may keep its first blocks dense)
        active = getattr(model, "active_params", None)
        experts = [m for m in model.modules() if isinstance(m, Experts)]
        moe = [m for m in model.modules() if isinstance(m, MoE)]
        return ModelShape(
            **dims,
            block_params=blocks // n,
            expert_block_params=sum(param_count(m) for m in experts) // n,
            n_experts=experts[0].w1.shape[0] if experts else 0,
            expert_dim=experts[0].w1.shape[2] if experts else 0,
            top_k=moe[0].m.top_k if moe else 0,
            n_shared=moe[0].m.n_shared if moe else 0,
            active_block_params=(active() - embed - head) // n if active else None,
            embed_params=embed,
            head_params=head,
        )


@dataclass(frozen=True)
class Layout:
    """One way to run the job: the parallel degrees and the knobs that change memory or time.

    ``microbatches`` is the number of micro-batches each data-parallel rank runs per step
    (pipeline micro-batches x gradient accumulation)."""

    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    sequence_parallel: bool = False
    schedule: str = "1F1B"
    microbatches: int = 1
    virtual_stages: int = 1
    zero_stage: int = 0
    dp_engine: str = "torch"
    activation_checkpoint: str = "none"
    checkpoint_every: int = 1
    cpu_offload: bool = False
    #: vocabulary-sharded logits meet the loss under tp (plait's ``loss_parallel``); False: the
    #: logits are gathered whole on every tp rank first
    loss_parallel: bool = True
    pp_cuts: tuple[int, ...] = ()  # first block of each stage after the first; () balanced
    pp_balance: str = "params"  # params | flops: how the automatic cuts balance stages
    cp: int = 1  # context parallel: each sequence split over cp ranks
    #: when FSDP2 reduces gradients under gradient accumulation: "every" micro-batch (plait),
    #: or only the "last" (set_requires_gradient_sync(False) before: KempnerForge), which
    #: keeps every unit's unsharded gradients accumulating across the step
    grad_sync: str = "every"
    ep: int = 1  # expert parallel (folded over dp_shard x cp)
    #: parallel.reshard_after_forward (ZeRO-3 on the torch engine)
    reshard_after_forward: bool | int | str = "auto"
    #: parallel.zero_flat (ZeRO-1/2 on the torch engine; :func:`uses_flat` resolves auto)
    zero_flat: bool | str = "auto"
    zero_bucket_mb: float = 25.0
    #: parallel.fsdp_unit_mb (blocks per FSDP2 unit: :func:`unit_blocks`); 0: one per block
    fsdp_unit_mb: float = 0.0
    #: the gradient reduction overlaps the last backward (DDP's buckets, FSDP2, Megatron-core's
    #: overlap_grad_reduce); False: it starts after backward ends (Megatron-LM 2021's local DDP,
    #: ``allreduce_gradients()`` after ``forward_backward_func``): a published-run setting only
    grad_overlap: bool = True
    #: sequence parallel as torch's tensor parallel runs it (plait): each linear saves its
    #: all-gathered (tokens, D) input for backward; False: Megatron-LM's, which saves the
    #: sequence shard and gathers again in backward (arXiv 2205.05198 sec. 4.2.2)
    sp_saves_gathered: bool = False
    #: DeepSpeed's zero_optimization sizes, in elements (its defaults; ``parallel.deepspeed_config``
    #: overrides them): reduce_bucket_size, stage3_max_live_parameters
    ds_reduce_bucket: float = 5e8
    ds_max_live: float = 1e9

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def dp_cp(self) -> int:
        """Ranks gradients are averaged over (FSDP2 shards over dp_shard x cp)."""
        return self.dp * self.cp

    @property
    def gpus(self) -> int:
        return self.dp * self.cp * self.tp * self.pp

    @property
    def v(self) -> int:
        return self.virtual_stages if self.pp > 1 else 1

    def short(self) -> str:
        s = f"dp {self.dp_replicate}x{self.dp_shard} tp {self.tp}{'+sp' if self.sequence_parallel else ''} pp {self.pp}"
        if self.cp > 1:
            s += f" cp {self.cp}"
        if self.pp > 1:
            s += f" {self.schedule}" + (f"/v{self.v}" if self.v > 1 else "")
        return s

    @staticmethod
    def from_config(cfg: Config, world_size: int) -> Layout:
        from plait.mesh import ParallelDims  # deferred: it loads torch.distributed

        p = cfg.parallel
        dims = ParallelDims.from_config(cfg, world_size)
        return Layout(
            dp_replicate=dims.dp_replicate, dp_shard=dims.dp_shard, tp=dims.tp, pp=dims.pp,
            sequence_parallel=p.sequence_parallel, schedule=p.pp_schedule,
            microbatches=cfg.train.grad_accum * (p.pp_microbatches if dims.pp > 1 else 1),
            virtual_stages=p.pp_virtual_stages, zero_stage=p.zero_stage, dp_engine=p.dp_engine,
            activation_checkpoint=p.activation_checkpoint,
            checkpoint_every=p.activation_checkpoint_every, cpu_offload=p.cpu_offload,
            pp_cuts=tuple(p.pp_cuts), pp_balance=p.pp_balance, cp=dims.cp, ep=p.ep,
            reshard_after_forward=p.reshard_after_forward,
            grad_sync="every" if p.reduce_every_microbatch else "last",
            zero_flat=p.zero_flat, zero_bucket_mb=p.zero_bucket_mb,
            fsdp_unit_mb=p.fsdp_unit_mb,
            sp_saves_gathered=True, **_deepspeed_sizes(p.deepspeed_config),
        )  # fmt: skip


def _deepspeed_sizes(path: str) -> dict:
    """The DeepSpeed bucket sizes a ``parallel.deepspeed_config`` file sets (see Layout)."""
    if not path:
        return {}
    import json
    from pathlib import Path

    zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    keys = {"reduce_bucket_size": "ds_reduce_bucket", "stage3_max_live_parameters": "ds_max_live"}
    return {ours: float(zero[k]) for k, ours in keys.items() if k in zero}


@dataclass(frozen=True)
class Job:
    """What one optimizer step processes and in which number formats."""

    global_batch: int  # sequences per step
    seq_len: int
    dtype: str = "bf16"  # compute dtype: fp32 | bf16 | fp16 | fp8 (fp8 linears, bf16 elsewhere)
    optimizer: str = "adamw"  # sgd | adam | adamw
    momentum: float = 0.0  # sgd only
    #: autocast: fp32 weights/grads/moments (plait); mixed: ZeRO paper's 2 + 2 + 12;
    #: pure: the model cast to bf16, its gradients and optimizer moments too (2 + 2 + 4)
    precision: str = "autocast"
    #: torch.compile fuses the memory-bound elementwise ops (an assumption: their HBM traffic
    #: falls to :data:`plait.plan.steptime.COMPILE_TRAFFIC` of eager's)
    compiled: bool = False
    #: the loss upcasts the logits to fp32 first (plait's ``model.loss``); False: cross-entropy
    #: straight on 16-bit logits (its log-softmax then saved in 16 bits)
    fp32_loss: bool = True
    #: FSDP2 MixedPrecisionPolicy.reduce_dtype: "fp32" over 16-bit parameters makes FSDP2
    #: accumulate unsharded gradients in fp32 between syncs; "" = the gradients' own dtype
    reduce_dtype: str = ""

    @property
    def tokens(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def act_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2

    @staticmethod
    def from_config(cfg: Config) -> Job:
        mixed = cfg.parallel.dp_engine == "deepspeed" and cfg.train.dtype != "fp32"
        return Job(
            cfg.train.global_batch, cfg.data.seq_len, cfg.train.dtype, cfg.optim.name,
            cfg.optim.momentum, "mixed" if mixed else "autocast", bool(cfg.train.compile),
        )  # fmt: skip


def uses_flat(layout: Layout, job: Job) -> bool:
    """ZeRO-1/2 on flat buckets (plait.ddp.flat_zero): replicated parameters, gradients and
    optimizer state sharded, no FSDP2 and no DDP buckets (plait.rules.uses_flat_zero)."""
    from plait.rules import flat_zero_auto, flat_zero_blocker

    why = flat_zero_blocker(
        engine=layout.dp_engine, stage=layout.zero_stage, tp=layout.tp, pp=layout.pp,
        cp=layout.cp, ep=layout.ep, dp_replicate=layout.dp_replicate, cpu_offload=layout.cpu_offload,
    )  # fmt: skip
    return (
        flat_zero_auto(layout.zero_flat, layout.zero_stage, job.dtype)
        and layout.dp_cp > 1
        and why is None
    )


def unit_blocks(shape: ModelShape, layout: Layout, blocks: int) -> tuple[int, int]:
    """(blocks per FSDP2 unit, blocks in the last unit) of a stage of ``blocks`` blocks under
    ``fsdp_unit_mb`` (plait.ddp.fsdp.unit_sizes: fp32 parameters, counted whole)."""
    if blocks < 1:
        return 1, 0
    per = 4 * shape.block_params
    g = max(1, int(layout.fsdp_unit_mb * 2**20 // per)) if layout.fsdp_unit_mb > 0 else 1
    g = min(g, blocks)
    return g, blocks % g or g


def microbatch_tokens(layout: Layout, job: Job) -> int:
    """Tokens of one micro-batch on one rank (T / cp of each sequence under context parallel)."""
    return job.tokens // (layout.dp_cp * layout.microbatches)

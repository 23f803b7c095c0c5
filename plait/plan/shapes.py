"""The model and the job as numbers: parameter counts per block / embedding / head, FLOPs per
token, and the layout (how ranks split the work). Counted from the gpt shape, no tensors; a
test checks the counts against ``plait.models.model_summary`` (built on meta)."""

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

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        """wq, wk, wv, wo + SwiGLU w1, w2, w3 + two RMSNorm gains."""
        d = self.dim
        return d * (2 * d + 2 * self.kv_dim) + 3 * d * self.ffn_dim + 2 * d

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.dim

    @property
    def head_params(self) -> int:
        """Final norm + untied output projection."""
        return self.vocab_size * self.dim + self.dim

    @property
    def params(self) -> int:
        return self.embed_params + self.n_layers * self.block_params + self.head_params

    def attn_flops_per_token(self, seq_len: int) -> float:
        """12·H·Q·T per layer: QK^T and AV, forward + backward, counted over the full
        (non-causal) square, as torchtitan and PaLM's MFU do."""
        return 12 * self.n_heads * self.head_dim * seq_len

    def flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per token, plait's MFU convention (DESIGN.md, torchtitan's
        ``get_nparams_and_flops``): 6·(N − embedding) + 12·L·H·Q·T."""
        return 6 * (self.params - self.embed_params) + self.n_layers * self.attn_flops_per_token(
            seq_len
        )

    @staticmethod
    def from_config(cfg: Config) -> ModelShape:
        if cfg.model.name == "hf":
            from plait.models.hf import LLAMA_STYLE, hf_config

            cls, c = hf_config(cfg.model)
            if cls.__name__ not in LLAMA_STYLE:
                raise ConfigError(
                    f"model.hf_arch: {cls.__name__!r} is not planned; plait plan models gpt and "
                    f"the Llama-style Transformers models ({', '.join(LLAMA_STYLE)})"
                )
            kv = c.num_key_value_heads or c.num_attention_heads
            return ModelShape(
                c.hidden_size, c.num_hidden_layers, c.num_attention_heads, kv,
                c.intermediate_size, c.vocab_size,
            )  # fmt: skip
        if cfg.model.name != "gpt":
            raise ConfigError(
                f"model.name: {cfg.model.name!r} is not planned; plait plan models gpt and "
                "hf Llama-style models (the seed models fit anywhere)"
            )
        from plait.models import gpt_args

        a = gpt_args(cfg)
        return ModelShape(a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.ffn_dim, a.vocab_size)


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

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def v(self) -> int:
        return self.virtual_stages if self.pp > 1 else 1

    def short(self) -> str:
        s = f"dp {self.dp_replicate}x{self.dp_shard} tp {self.tp}{'+sp' if self.sequence_parallel else ''} pp {self.pp}"
        if self.pp > 1:
            s += f" {self.schedule}" + (f"/v{self.v}" if self.v > 1 else "")
        return s

    @staticmethod
    def from_config(cfg: Config, world_size: int) -> Layout:
        from plait.mesh import ParallelDims

        p = cfg.parallel
        dims = ParallelDims.from_config(cfg, world_size)
        return Layout(
            dp_replicate=dims.dp_replicate, dp_shard=dims.dp_shard, tp=dims.tp, pp=dims.pp,
            sequence_parallel=p.sequence_parallel, schedule=p.pp_schedule,
            microbatches=cfg.train.grad_accum * (p.pp_microbatches if dims.pp > 1 else 1),
            virtual_stages=p.pp_virtual_stages, zero_stage=p.zero_stage, dp_engine=p.dp_engine,
            activation_checkpoint=p.activation_checkpoint,
            checkpoint_every=p.activation_checkpoint_every, cpu_offload=p.cpu_offload,
        )  # fmt: skip


@dataclass(frozen=True)
class Job:
    """What one optimizer step processes and in which number formats."""

    global_batch: int  # sequences per step
    seq_len: int
    dtype: str = "bf16"  # compute dtype: fp32 | bf16 | fp16
    optimizer: str = "adamw"  # sgd | adam | adamw
    momentum: float = 0.0  # sgd only
    precision: str = "autocast"  # autocast: fp32 weights/grads (plait); mixed: ZeRO-paper 2+2+12

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
            cfg.optim.momentum, "mixed" if mixed else "autocast",
        )  # fmt: skip

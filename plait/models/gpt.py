"""A Llama-style decoder: token embedding, RMSNorm, RoPE, causal SDPA attention with grouped-query
heads, SwiGLU MLP, untied output head. Read top to bottom like nanoGPT; names follow torchtitan's
Llama so its TP plan and checkpoints map one to one.

Shapes: B batch, T sequence, D dim, H heads (local heads under TP), K kv heads, E head dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plait.config import Config
from plait.errors import ConfigError, did_you_mean
from plait.models.base import PlaitModel, attention_flops, matmul_flops
from plait.models.moe import MoE, MoEArgs, moe_params
from plait.parallel_attrs import CP_ATTR
from plait.registry import data_vocab_size, register_model
from plait.rules import divisors


@dataclass(frozen=True)
class GPTArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    moe: MoEArgs | None = None  # mixture-of-experts feed-forward (plait.models.moe)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# Presets for training on CPU (tiny, small) and for planning (125m .. 405b). The large ones are
# Llama 3's published shapes (arXiv 2407.21783, table 3); 125m/350m are GPT-3's (arXiv 2005.14165).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(dim=64, n_layers=8, n_heads=4, n_kv_heads=4, ffn_dim=192, vocab_size=256),
    "small": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=688, vocab_size=256),
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048, vocab_size=32000),
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=2816, vocab_size=32000),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, vocab_size=128256),
    "8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128256),
    "70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672, vocab_size=128256),
    "405b": dict(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim=53248, vocab_size=128256
    ),
}


# Mixture-of-experts presets: ``moe_tiny`` for CPU runs; Mixtral 8x7B (arXiv 2401.04088, its
# config.json: 46.7B parameters, 12.9B active) and DeepSeek-V3 (arXiv 2412.19437: 671B, 37B
# active) for planning. DeepSeek-V3's multi-head latent attention is modelled as 128-head
# attention (gpt has no MLA): +18.4M parameters per block, +0.17% in total (tests/test_moe.py).
MOE_PRESETS: dict[str, tuple[dict[str, int], dict]] = {
    "moe_tiny": (
        dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=192, vocab_size=256),
        dict(n_experts=8, top_k=2, expert_dim=64),
    ),
    "mixtral_8x7b": (
        dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=32000),
        dict(n_experts=8, top_k=2, expert_dim=14336),
    ),
    "deepseek_v3": (
        dict(dim=7168, n_layers=61, n_heads=128, n_kv_heads=128, ffn_dim=18432, vocab_size=129280),
        dict(
            n_experts=256, top_k=8, expert_dim=2048, n_shared=1, score="sigmoid",
            route_scale=2.5, bias_update=0.001, first_dense=3,
        ),
    ),
}  # fmt: skip
PRESETS.update({k: shape for k, (shape, _) in MOE_PRESETS.items()})

#: model.moe_* config key -> MoEArgs field
MOE_KEYS = {
    "moe_experts": "n_experts", "moe_top_k": "top_k", "moe_ffn_dim": "expert_dim",
    "moe_shared": "n_shared", "moe_score": "score", "moe_route_scale": "route_scale",
    "moe_aux_loss": "aux_loss", "moe_bias_update": "bias_update",
    "moe_capacity_factor": "capacity_factor", "moe_first_dense": "first_dense",
}  # fmt: skip


def moe_args(cfg: Config) -> MoEArgs | None:
    """The preset's experts with the ``model.moe_*`` keys on top; None: a dense model."""
    m = cfg.model
    base = dict(MOE_PRESETS[m.preset][1]) if m.preset in MOE_PRESETS else {}
    for key, field in MOE_KEYS.items():
        if getattr(m, key) is not None:
            base[field] = getattr(m, key)
    if not base.get("n_experts"):
        return None
    base.setdefault("top_k", 2)
    base.setdefault("expert_dim", m.ffn_dim or PRESETS[m.preset]["ffn_dim"])
    return MoEArgs(**base)


def gpt_args(cfg: Config) -> GPTArgs:
    """The preset of ``model.preset`` with the ``model.*`` sizes set on top."""
    m = cfg.model
    if m.preset not in PRESETS:
        raise ConfigError(
            f"model.preset: {m.preset!r} is not a gpt preset{did_you_mean(m.preset, PRESETS)}; "
            f"allowed: {', '.join(PRESETS)}"
        )
    shape = dict(PRESETS[m.preset])
    for k in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size"):
        if getattr(m, k) is not None:
            shape[k] = getattr(m, k)
    if m.vocab_size == "auto":
        shape["vocab_size"] = auto_vocab_size(cfg)
    if m.n_kv_heads is not None:
        shape["n_kv_heads"] = m.n_kv_heads
    elif m.n_heads is not None:
        shape["n_kv_heads"] = m.n_heads
    return GPTArgs(
        **shape,
        max_seq_len=m.max_seq_len or cfg.data.seq_len,
        rope_theta=m.rope_theta,
        norm_eps=m.norm_eps,
        dropout=m.dropout,
        moe=moe_args(cfg),
    )


#: ``model.vocab_size: auto`` pads the data's vocabulary up to a multiple of this (as Megatron
#: does: tensor parallel splits the vocabulary evenly, and such sizes suit matmul kernels)
AUTO_VOCAB_MULTIPLE = 64


def auto_vocab_size(cfg: Config) -> int:
    """``model.vocab_size: auto``: the data's recorded vocabulary, padded (the extra ids are
    never drawn)."""
    v = data_vocab_size(cfg)
    if v is None:
        raise ConfigError(
            f"model.vocab_size: auto needs data that records its vocabulary (data.name=tokens on "
            f"a prepared folder); data.name={cfg.data.name} does not: give the number"
        )
    return -(-v // AUTO_VOCAB_MULTIPLE) * AUTO_VOCAB_MULTIPLE


def check_gpt(cfg: Config) -> None:
    """Shapes the config asks for that the model cannot take (no process group needed)."""
    a = gpt_args(cfg)
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
        if getattr(a, k) < 1:
            raise ConfigError(f"model.{k}: {getattr(a, k)} is not allowed; must be >= 1")
    if a.dim % a.n_heads:
        raise ConfigError(
            f"model.n_heads: {a.n_heads} does not divide model.dim={a.dim}; pick n_heads among {divisors(a.dim)}"
        )
    if a.head_dim % 2:
        raise ConfigError(f"model.dim / model.n_heads = {a.head_dim} must be even for RoPE")
    if a.n_heads % a.n_kv_heads:
        raise ConfigError(
            f"model.n_kv_heads: {a.n_kv_heads} does not divide model.n_heads={a.n_heads}; pick among {divisors(a.n_heads)}"
        )
    need = data_vocab_size(cfg)
    if need is not None and a.vocab_size < need:
        raise ConfigError(
            f"model.vocab_size: {a.vocab_size} is too small for data.name={cfg.data.name} "
            f"(token ids up to {need - 1}); needs >= {need}"
        )
    if a.moe is not None:
        e = a.moe
        if not 1 <= e.top_k <= e.n_experts:
            raise ConfigError(
                f"model.moe_top_k: {e.top_k} is not allowed; must be in 1..model.moe_experts={e.n_experts}"
            )
        for key in ("moe_ffn_dim", "moe_shared", "moe_aux_loss", "moe_bias_update"):
            if getattr(e, MOE_KEYS[key]) < (1 if key == "moe_ffn_dim" else 0):
                raise ConfigError(
                    f"model.{key}: {getattr(e, MOE_KEYS[key])} is not allowed; must be >= 0"
                )
        if e.capacity_factor < 0:
            raise ConfigError(
                f"model.moe_capacity_factor: {e.capacity_factor} is not allowed; 0 (dropless) or > 0"
            )
    if a.max_seq_len < cfg.data.seq_len:
        raise ConfigError(
            f"model.max_seq_len: {a.max_seq_len} is shorter than data.seq_len={cfg.data.seq_len}"
        )


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, E/2) for rotary embeddings (Su et al., arXiv 2104.09864)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x: (B, T, H, E) by position-dependent angles."""
    T = x.shape[1]
    cos, sin = cos[:T, None, :], sin[:T, None, :]  # (T, 1, E/2)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, T, H, E/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        self.head_dim = a.head_dim
        self.n_rep = a.n_heads // a.n_kv_heads
        self.dropout = a.dropout
        self.wq = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=False)
        self.wk = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.wv = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.wo = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        cp = getattr(self, CP_ATTR, None)  # context parallel (plait.context_parallel)
        if cp is not None:  # this rank holds 2 chunks of the sequence: their global positions
            pos = cp.positions(T, x.device)
            cos, sin = cos[pos], sin[pos]
        # -1 heads: under tensor parallelism each rank holds only its share of the heads
        q = self.wq(x).view(B, T, -1, self.head_dim)  # (B, T, H, E)
        k = self.wk(x).view(B, T, -1, self.head_dim)  # (B, T, K, E)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H|K, T, E)
        dropout_p = self.dropout if self.training else 0.0
        if cp is not None:  # keys and values gathered over cp, masked by global position
            y = cp(q, k, v, dropout_p=dropout_p)  # (B, H, T, E)
            return self.wo(y.transpose(1, 2).reshape(B, T, -1))
        if self.n_rep > 1:  # grouped-query attention: share each kv head across n_rep q heads
            k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*E)
        return self.wo(y)


class FeedForward(nn.Module):
    """SwiGLU (Shazeer, arXiv 2002.05202): w2(silu(w1 x) * w3 x)."""

    def __init__(self, a: GPTArgs):
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.w2 = nn.Linear(a.ffn_dim, a.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, a: GPTArgs, layer: int = 0):
        super().__init__()
        self.attention_norm = nn.RMSNorm(a.dim, eps=a.norm_eps)
        self.attention = Attention(a)
        self.ffn_norm = nn.RMSNorm(a.dim, eps=a.norm_eps)
        moe = a.moe is not None and layer >= a.moe.first_dense
        self.feed_forward = MoE(a.dim, a.moe) if moe else FeedForward(a)
        self.drop = nn.Dropout(a.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.attention_norm(x), cos, sin))
        return x + self.drop(self.feed_forward(self.ffn_norm(x)))


class GPT(PlaitModel):
    task = "lm"
    #: plait.parallel_attrs.CP_ATTENTION_MODULES: context parallel gives these its attention
    cp_attention_modules = ("Attention",)

    def __init__(self, args: GPTArgs):
        super().__init__()
        self.args = args
        self.vocab_size = args.vocab_size
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict(
            {str(i): TransformerBlock(args, i) for i in range(args.n_layers)}
        )
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        # non-persistent: derived from args, recomputed after to_empty(), never checkpointed
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def pre_modules(self) -> list[str]:
        return ["tok_embeddings"]

    def post_modules(self) -> list[str]:
        return ["norm", "output"]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Modules a pipeline stage does not own are None (see plait.pipeline); the first stage
        # takes token ids (B, T), the others hidden states (B, T, D).
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for block in self.layers.values():
            h = block(h, self.rope_cos, self.rope_sin)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h  # (B, T, V) logits

    def tp_plan(self) -> dict[str, str]:
        # Megatron-LM (arXiv 1909.08053) sec. 3: q/k/v and w1/w3 column-parallel, wo and w2
        # row-parallel: one all-reduce after attention and one after the MLP, heads split.
        # gather_input makes the shared input of q/k/v (w1/w3) replicated once, so backward
        # reduces its gradient once; norms are sequence-sharded under sequence parallel.
        # Styles: plait/tensor_parallel/styles.py.
        block = {
            "attention": "gather_input",
            "attention.wq": "colwise", "attention.wk": "colwise", "attention.wv": "colwise",
            "attention.wo": "rowwise",
            "feed_forward": "gather_input",
            "feed_forward.w1": "colwise", "feed_forward.w3": "colwise",
            "feed_forward.w2": "rowwise",
            "attention_norm": "norm", "ffn_norm": "norm",
        }  # fmt: skip
        if self.args.moe is not None:
            # experts: hidden dim split by plait.expert_parallel (not DTensor styles); the
            # router is replicated; shared experts are a Megatron MLP like the dense one
            block.update({
                "feed_forward.router.gate": "replicate",
                "feed_forward.shared_experts": "gather_input",
                "feed_forward.shared_experts.w1": "colwise",
                "feed_forward.shared_experts.w3": "colwise",
                "feed_forward.shared_experts.w2": "rowwise",
            })  # fmt: skip
        plan = {f"layers.*.{k}": v for k, v in block.items()}
        plan.update({"tok_embeddings": "vocab_embedding", "norm": "norm", "output": "vocab_head"})
        return plan

    def tp_dims(self) -> dict[str, int]:
        """Sizes tensor parallel splits, by config key (heads split whole across tp ranks)."""
        a = self.args
        return {
            "model.n_heads": a.n_heads,
            "model.n_kv_heads": a.n_kv_heads,
            "model.ffn_dim": a.ffn_dim,
            "model.vocab_size": a.vocab_size,
        }

    def param_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        if name.endswith("norm.weight"):
            return torch.ones(shape)
        if name == "tok_embeddings.weight":
            return torch.empty(shape).normal_(0.0, 1.0, generator=gen)
        if name == "output.weight":
            std = self.args.dim**-0.5
            return nn.init.trunc_normal_(
                torch.empty(shape), 0.0, std, -3 * std, 3 * std, generator=gen
            )
        std = 0.02
        if name.endswith(("attention.wo.weight", "w2.weight", "experts.w2")):
            std /= math.sqrt(2 * self.args.n_layers)  # residual-branch scaling (GPT-2)
        return nn.init.trunc_normal_(torch.empty(shape), 0.0, std, -2 * std, 2 * std, generator=gen)

    def block_flops(self, block: nn.Module, seq_len: int) -> float:
        flops = matmul_flops(block) + attention_flops(seq_len, block.attention.wq.out_features)
        ff = block.feed_forward
        if isinstance(ff, MoE):  # the top-k experts a token runs (not Linear modules)
            flops += 2.0 * 3 * self.args.dim * ff.m.expert_dim * ff.m.top_k
        return flops

    def active_params(self) -> int:
        """Parameters one token uses (MoE: the top-k and shared experts; else all)."""
        a = self.args
        total = sum(p.numel() for p in self.parameters())
        if a.moe is None:
            return total
        n_moe = a.n_layers - min(a.moe.first_dense, a.n_layers)
        idle = moe_params(a.dim, a.moe, active=False) - moe_params(a.dim, a.moe, active=True)
        return total - n_moe * idle

    def before_optimizer_step(self) -> None:
        for block in self.layers.values():
            for mod in block.modules():
                if isinstance(mod, MoE):
                    mod.finish_step()

    def set_loss_scale(self, scale: float) -> None:
        """The trainer's loss scale of this step (the balance loss's gradient uses it)."""
        for block in self.layers.values():
            for mod in block.modules():
                if isinstance(mod, MoE):
                    mod.loss_scale = float(scale)

    def plan_dims(self) -> dict[str, int]:
        a = self.args
        return dict(
            dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads,
            ffn_dim=a.ffn_dim, vocab_size=a.vocab_size,
        )  # fmt: skip

    def init_buffers(self) -> None:
        a = self.args
        cos, sin = rope_tables(a.head_dim, a.max_seq_len, a.rope_theta)
        self.rope_cos = cos.to(self.rope_cos.device)
        self.rope_sin = sin.to(self.rope_sin.device)
        for block in self.layers.values():  # the balancing bias starts at zero
            for mod in block.modules():
                if isinstance(mod, MoE):
                    mod.router.expert_bias.zero_()


@register_model("gpt", task="lm", check=check_gpt)
def build_gpt(cfg: Config) -> GPT:
    return GPT(gpt_args(cfg))

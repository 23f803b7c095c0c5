"""GPT-2 (``GPT2LMHeadModel``) rebuilt from ``nn.Linear`` so tensor parallel can split it.

HF's GPT-2 keeps q, k and v in one ``Conv1D`` ``c_attn`` (weight (D, 3D), output split by
``split_size``): column-sharding it would give each rank a slice across q, k and v instead of
whole heads. Here q/k/v are three Linears (head-shardable) and every Conv1D is a Linear with
the transposed weight; :meth:`HFGPT2.to_hf` re-fuses and transposes, so exports load in
Transformers unchanged. The math follows ``transformers.models.gpt2.modeling_gpt2`` (sdpa
path): pre-LayerNorm blocks, ``scaling`` = head_dim^-0.5 (/ (layer+1) when
``scale_attn_by_inverse_layer_idx``), learned positions, ``activation_function``.

Shapes: B batch, T sequence, D hidden, H heads (local heads under TP), E head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plait.models.base import attention_flops, matmul_flops
from plait.models.hf.base import HFModel
from plait.models.hf.weights import HFWeights


class GPT2Attention(nn.Module):
    def __init__(self, c, layer_idx: int):
        super().__init__()
        D = c.hidden_size
        self.head_dim = D // c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, D) for _ in range(3))
        self.c_proj = nn.Linear(D, D)
        self.scaling = self.head_dim**-0.5 if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.attn_pdrop = c.attn_pdrop
        self.resid_dropout = nn.Dropout(c.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds only its share of the heads
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, E)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scaling,
            dropout_p=self.attn_pdrop if self.training else 0.0,
        )  # fmt: skip
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*E)
        return self.resid_dropout(self.c_proj(y))


class GPT2MLP(nn.Module):
    def __init__(self, c):
        # transformers is optional and heavy: imported only when an hf model is built
        from transformers.activations import ACT2FN

        super().__init__()
        inner = c.n_inner if c.n_inner is not None else 4 * c.hidden_size
        self.c_fc = nn.Linear(c.hidden_size, inner)
        self.c_proj = nn.Linear(inner, c.hidden_size)
        self.act = ACT2FN[c.activation_function]
        self.dropout = nn.Dropout(c.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, c, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)
        self.attn = GPT2Attention(c, layer_idx)
        self.ln_2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)
        self.mlp = GPT2MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class HFGPT2(HFModel):
    def __init__(self, hf_cls: type, config, pretrained: str | None = None):
        super().__init__(hf_cls, config, pretrained)
        c = config
        with torch.device("meta"):
            self.wte = nn.Embedding(c.vocab_size, c.hidden_size)
            self.wpe = nn.Embedding(c.max_position_embeddings, c.hidden_size)
            self.layers = nn.ModuleDict(
                {str(i): GPT2Block(c, i) for i in range(c.num_hidden_layers)}
            )
            self.ln_f = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.drop = nn.Dropout(c.embd_pdrop)
        self._keep_buffers()

    def pre_modules(self) -> list[str]:
        return ["wte", "wpe"]

    def post_modules(self) -> list[str]:
        return ["ln_f", "lm_head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the first stage takes token ids (B, T), later pipeline stages hidden states (B, T, D)
        if self.wte is not None:
            pos = torch.arange(x.shape[1], device=x.device)[None]  # (1, T)
            h = self.drop(self.wte(x) + self.wpe(pos))
        else:
            h = x
        for block in self.layers.values():
            h = block(h)
        if self.ln_f is not None:
            h = self.ln_f(h)
        return self.lm_head(h) if self.lm_head is not None else h  # (B, T, V) logits

    def tp_plan(self) -> dict[str, str]:
        # Megatron-LM (arXiv 1909.08053) sec. 3, the split its paper draws for GPT-2
        block = {
            "attn": "gather_input",
            "attn.q_proj": "colwise", "attn.k_proj": "colwise", "attn.v_proj": "colwise",
            "attn.c_proj": "rowwise",
            "mlp": "gather_input", "mlp.c_fc": "colwise", "mlp.c_proj": "rowwise",
            "ln_1": "norm", "ln_2": "norm",
        }  # fmt: skip
        plan = {f"layers.*.{k}": v for k, v in block.items()}
        plan.update(
            {"wte": "vocab_embedding", "wpe": "replicate", "ln_f": "norm", "lm_head": "vocab_head"}
        )
        return plan

    def tp_dims(self) -> dict[str, int]:
        c = self.hf_config
        key = "model.hf_overrides."
        return {
            key + "num_attention_heads": c.num_attention_heads,
            key + "vocab_size": c.vocab_size,
        }

    def block_flops(self, block: nn.Module, seq_len: int) -> float:
        return matmul_flops(block) + attention_flops(seq_len, block.attn.q_proj.out_features)

    # ---- names and layouts: HF keeps q/k/v fused and Conv1D weights as (in, out)
    def embed_name(self) -> str:
        return "wte.weight"

    def hf_name(self, name: str) -> str:
        if name.startswith("lm_head."):
            return name
        if name.startswith("layers."):
            return "transformer.h." + name.removeprefix("layers.")
        return "transformer." + name

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            if ".attn.k_proj." in k or ".attn.v_proj." in k:
                continue  # fused with q_proj below
            if ".attn.q_proj." in k:
                kind = k.rsplit(".", 1)[1]  # weight | bias
                parts = [state[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                fused = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1)
                out[self.hf_name(k.replace("q_proj", "c_attn"))] = fused  # (D, 3D) | (3D,)
            elif k.endswith("weight") and v.dim() == 2 and ".layers." in f".{k}":
                out[self.hf_name(k)] = v.t()  # Linear (out, in) -> Conv1D (in, out)
            else:
                out[self.hf_name(k)] = v
        return {k: v.contiguous() for k, v in out.items()}

    def from_hf(self, name: str, weights: HFWeights) -> torch.Tensor:
        for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
            if f".attn.{p}." in name:
                kind = name.rsplit(".", 1)[1]
                fused = weights.get(self.hf_name(name.replace(p, "c_attn")))
                part = fused.chunk(3, dim=-1)[i]  # HF splits by split_size = D
                return part.t() if kind == "weight" else part
        t = super().from_hf(name, weights)
        return t.t() if name.startswith("layers.") and t.dim() == 2 else t

    def hf_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        t = super().hf_init(name, shape, gen)
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
            # GPT-2's scaled init of the residual projections: std / sqrt(2 * n_layer)
            t /= math.sqrt(2 * self.hf_config.num_hidden_layers)
        return t

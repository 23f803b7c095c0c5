"""Llama / Mistral: Transformers' own embedding, decoder layers, final norm and rotary module,
re-parented so a parameter's name is HF's minus the ``model.`` prefix
(``layers.3.self_attn.q_proj.weight``); the forward chain (embed -> layers -> norm -> head) is
written here, passing each layer the rotary tables and the causal mask it needs."""

from __future__ import annotations

import torch
from torch import nn

from plait.models.base import attention_flops, matmul_flops
from plait.models.hf.base import HFModel, hf_skeleton
from plait.parallel_attrs import CP_ATTR, SEQ_SHARDS_ATTR


class HFDecoder(HFModel):
    """Llama / Mistral: HF's embedding, decoder layers, final norm and rotary embedding."""

    #: plait.parallel_attrs.CP_ATTENTION_MODULES: context parallel gives these its attention
    #: (through Transformers' AttentionInterface: plait.context_parallel.apply)
    cp_attention_modules = ("LlamaAttention", "MistralAttention")

    def __init__(self, hf_cls: type, config, pretrained: str | None = None):
        super().__init__(hf_cls, config, pretrained)
        hf = hf_skeleton(hf_cls, config)
        base = hf.model
        self.embed_tokens = base.embed_tokens
        self.layers = nn.ModuleDict({str(i): layer for i, layer in enumerate(base.layers)})
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb  # no parameters: kept on every pipeline stage
        self.lm_head = hf.lm_head
        if self.lm_head.weight is self.embed_tokens.weight:
            self.lm_head.weight = nn.Parameter(torch.empty_like(self.lm_head.weight))
        self.sliding_window = getattr(config, "sliding_window", None)
        self._keep_buffers()

    def pre_modules(self) -> list[str]:
        return ["embed_tokens"]

    def post_modules(self) -> list[str]:
        return ["norm", "lm_head"]

    def hf_name(self, name: str) -> str:
        return name if name.startswith("lm_head.") else f"model.{name}"

    def embed_name(self) -> str:
        return "embed_tokens.weight"

    def _mask(self, T: int, device) -> torch.Tensor | None:
        """None: causal (HF's sdpa path sets is_causal). Mistral's sliding window, when shorter
        than the sequence, as HF's boolean mask: query i sees keys j with i - w < j <= i."""
        w = self.sliding_window
        if w is None or T <= w:
            return None
        i = torch.arange(T, device=device)
        d = i[:, None] - i[None, :]
        return ((d >= 0) & (d < w))[None, None]  # (1, 1, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the first stage takes token ids (B, T), later pipeline stages hidden states (B, T, D),
        # under sequence parallel their local sequence shard (B, T / tp, D): positions and mask
        # are for the whole sequence, which attention sees after its all-gather
        T = x.shape[1] * (1 if self.embed_tokens is not None else getattr(self, SEQ_SHARDS_ATTR, 1))
        h = self.embed_tokens(x) if self.embed_tokens is not None else x
        cp = getattr(self, CP_ATTR, None)  # context parallel: this rank's 2 chunks of 2 x cp
        if cp is None:
            pos = torch.arange(T, device=h.device)[None]  # (1, T)
            mask = self._mask(T, h.device)
        else:  # global positions; the attention masks by them itself (sliding window too)
            pos, mask = cp.positions(T, h.device)[None], None
        rope = self.rotary_emb(h, pos)  # cos, sin: (1, T, E)
        for layer in self.layers.values():
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            if isinstance(h, tuple):  # older Transformers return (hidden, ...)
                h = h[0]
        if self.norm is not None:
            h = self.norm(h)
        return self.lm_head(h) if self.lm_head is not None else h  # (B, T, V) logits

    def tp_plan(self) -> dict[str, str]:
        # Megatron-LM (arXiv 1909.08053) sec. 3, as plait.models.gpt: q/k/v and gate/up
        # column-parallel, o and down row-parallel; gather_input makes the shared input of the
        # column-parallel Linears replicated once. HF reshapes with -1 heads, so a rank's
        # attention runs on its local heads unchanged.
        block = {
            "self_attn": "gather_input",
            "self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise",
            "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise",
            "mlp": "gather_input",
            "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise",
            "input_layernorm": "norm", "post_attention_layernorm": "norm",
        }  # fmt: skip
        plan = {f"layers.*.{k}": v for k, v in block.items()}
        plan.update({"embed_tokens": "vocab_embedding", "norm": "norm", "lm_head": "vocab_head"})
        return plan

    def tp_dims(self) -> dict[str, int]:
        c = self.hf_config
        key = "model.hf_overrides."
        return {
            key + "num_attention_heads": c.num_attention_heads,
            key + "num_key_value_heads": c.num_key_value_heads or c.num_attention_heads,
            key + "intermediate_size": c.intermediate_size,
            key + "vocab_size": c.vocab_size,
        }

    def block_flops(self, block: nn.Module, seq_len: int) -> float:
        return matmul_flops(block) + attention_flops(seq_len, block.self_attn.q_proj.out_features)

    def plan_dims(self) -> dict[str, int]:
        c = self.hf_config
        return dict(
            dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads or c.num_attention_heads,
            ffn_dim=c.intermediate_size, vocab_size=c.vocab_size,
        )  # fmt: skip

    def hf_init(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        t = super().hf_init(name, shape, gen)
        pad = self.hf_config.pad_token_id
        if name == "embed_tokens.weight" and pad is not None and 0 <= pad < shape[0]:
            t[pad] = 0.0  # as HF's _init_weights for an Embedding with padding_idx
        return t

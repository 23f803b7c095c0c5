"""Bring your own model: a small decoder written against plait's model contract, trained by
plait under any layout with the same losses as one process.

    python examples/own_model.py                                   # one process
    torchrun --nproc-per-node 8 examples/own_model.py pp=2 dp_shard=2 tp=2 zero_stage=2

The contract (docs/own_model.md): derive from plait.PlaitModel; blocks in ``self.layers``
(an nn.ModuleDict keyed "0", "1", ...); name the modules before and after them; let forward
skip a module that is None (a pipeline stage holds only its own). Initialisation (each module's
reset_parameters, seeded by module name), a summed cross-entropy loss and its token count are
the base class's defaults; a tensor-parallel plan is needed only for tp > 1.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

import plait


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.head_dim = dim // n_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # -1 heads: under tensor parallel each rank holds n_heads / tp of them
        q, k, v = (
            f(x).view(b, t, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class TinyDecoder(plait.PlaitModel):
    task = "lm"  # tokens in, next-token logits out: the default loss is summed cross-entropy

    def __init__(self, vocab_size: int = 256, dim: int = 32, n_layers: int = 4, n_heads: int = 4):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(64, dim)
        self.layers = nn.ModuleDict({str(i): Block(dim, n_heads) for i in range(n_layers)})
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def pre_modules(self) -> list[str]:
        return ["embed", "pos"]

    def post_modules(self) -> list[str]:
        return ["norm", "head"]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = tokens  # a later pipeline stage gets hidden states and has no embeddings
        if self.embed is not None:
            h = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.layers.values():
            h = block(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h) if self.head is not None else h

    def tp_plan(self) -> dict[str, str]:
        """Megatron-style: q/k/v and up column-parallel, o and down row-parallel (styles:
        plait/tensor_parallel/styles.py); vocabulary-sharded embedding and head."""
        block = {
            "attn_norm": "norm", "mlp_norm": "norm",
            "attn": "gather_input", "attn.q": "colwise", "attn.k": "colwise", "attn.v": "colwise",
            "attn.o": "rowwise", "up": "colwise", "down": "rowwise",
        }  # fmt: skip
        plan = {f"layers.*.{k}": v for k, v in block.items()}
        plan.update(
            {"embed": "vocab_embedding", "pos": "replicate", "norm": "norm", "head": "vocab_head"}
        )
        return plan


#: the run: seeded synthetic tokens, 6 SGD steps (SGD: the final weights, not only the losses,
#: agree with one process to 1e-5; Adam turns rounding-level differences in near-zero gradients
#: into lr-sized steps); layout keys come from the command line
CONFIG = ["data.name=synthetic", "data.seq_len=16", "train.steps=6", "train.global_batch=8",
          "optim.name=sgd", "optim.lr=0.3", "optim.momentum=0.9", "parallel.pp_microbatches=2",
          "log.wandb=off", "log.tensorboard=false", "log.progress=off"]  # fmt: skip


def run(layout: list[str], run_dir: str, return_state: bool = False):
    overrides = [*CONFIG, *(f"parallel.{kv}" for kv in layout), f"log.run_dir={run_dir}"]
    return plait.train(None, overrides, model=TinyDecoder, return_state=return_state)


if __name__ == "__main__":
    result = run(sys.argv[1:], "runs/own_model")
    print("losses:", [round(m["loss"], 4) for m in result.metrics])

"""Which part of the sequence a context-parallel rank holds (Llama 3, arXiv 2407.21783 sec.
3.3.2): the sequence cut into 2 x cp equal chunks, rank r keeps chunks r and 2cp-1-r. Under a
causal mask chunk i attends to i+1 chunks, so every rank's pair attends to 2cp+1 chunks: the
work is balanced. Pure torch, no process group."""

from __future__ import annotations

import torch


def chunk_ids(cp_rank: int, cp: int) -> tuple[int, int]:
    """The two chunks (of 2 x cp) rank ``cp_rank`` holds, in the order it holds them."""
    return cp_rank, 2 * cp - 1 - cp_rank


def shard_sequence(t: torch.Tensor, cp_rank: int, cp: int, dim: int = 1) -> torch.Tensor:
    """This rank's two chunks of ``t`` along ``dim`` (the sequence), concatenated: (B, T) ->
    (B, T / cp)."""
    chunks = t.chunk(2 * cp, dim=dim)
    return torch.cat([chunks[i] for i in chunk_ids(cp_rank, cp)], dim=dim)


def cp_positions(local_len: int, cp_rank: int, cp: int, device=None) -> torch.Tensor:
    """Global positions (T / cp,) of the tokens a rank holds, in its local order."""
    c = local_len // 2
    a, b = chunk_ids(cp_rank, cp)
    pos = torch.cat([torch.arange(a * c, (a + 1) * c), torch.arange(b * c, (b + 1) * c)])
    return pos.to(device)


def gathered_positions(local_len: int, cp: int, device=None) -> torch.Tensor:
    """Global positions (T,) of the keys after an all-gather over cp ranks (rank order)."""
    return torch.cat([cp_positions(local_len, r, cp, device) for r in range(cp)])


def shard_batch(batch: dict[str, torch.Tensor], cp_rank: int, cp: int) -> dict[str, torch.Tensor]:
    """A language-model batch's token tensors ((B, T): input, target, masks) cut to this rank's
    chunks; anything else (per-sample values) is kept whole."""
    if cp == 1:
        return batch
    T = batch["input"].shape[1]
    return {
        k: shard_sequence(v, cp_rank, cp) if v.dim() >= 2 and v.shape[1] == T else v
        for k, v in batch.items()
    }

"""Context parallel: the sequence of every sample split over cp ranks (docs/design.md, context
parallel). Llama 3's all-gather method (arXiv 2407.21783 sec. 3.3.2): the sequence is cut into
2 x cp chunks and rank r keeps chunks r and 2cp-1-r, so every rank has the same causal work;
each rank keeps its queries and all-gathers keys and values before attention. It runs on any
backend (gloo/CPU included), unlike torch's ring attention on DTensor.

- :mod:`.shard`: which chunks and global positions a rank holds; the batch split (pure torch);
- :mod:`.attention`: the all-gather attention (autograd-aware collectives);
- :mod:`.apply`: :func:`apply_cp`, which hands a model its side of the contract
  (plait.parallel_attrs.CP_ATTR) at wrap step 2b of plait.parallelize.

Only :mod:`.shard` is imported here: the attention's functional collectives load with
:mod:`.apply`, when cp > 1 (start-up).
"""

from plait.context_parallel.shard import chunk_ids, cp_positions, shard_batch, shard_sequence

__all__ = [
    "chunk_ids",
    "cp_positions",
    "shard_batch",
    "shard_sequence",
]

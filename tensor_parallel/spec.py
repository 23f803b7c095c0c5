"""The style vocabulary a model's ``tp_plan()`` speaks, as far as checks need it: which
dimension each style shards and how a plan pattern matches module names. No DTensor here, so
the checks run before any process group without loading torch.distributed.tensor."""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from torch import nn

#: style name -> (what is sharded, attribute of the module holding that size) for validation;
#: plait.tensor_parallel.styles turns each name into a DTensor ParallelStyle
STYLES: dict[str, tuple[str, Callable[[nn.Module], int] | None]] = {
    "colwise": ("out_features", lambda m: m.out_features),
    "rowwise": ("in_features", lambda m: m.in_features),
    "gather_input": ("", None),
    "norm": ("", None),
    "vocab_embedding": ("num_embeddings", lambda m: m.num_embeddings),
    "vocab_head": ("out_features", lambda m: m.out_features),
    "replicate": ("", None),
}


def match(pattern: str, name: str) -> bool:
    """``layers.*.attention.wq`` matches ``layers.3.attention.wq``: one ``*`` per name part."""
    p, n = pattern.split("."), name.split(".")
    return len(p) == len(n) and all(fnmatchcase(b, a) for a, b in zip(p, n))

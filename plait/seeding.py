"""Seeds derived from names, so a value never depends on the order things are created in.

Models seed each parameter by (seed, parameter name) and data sources each batch by (seed,
split, step); both come from here, below models and data in the import graph."""

from __future__ import annotations

import hashlib


def name_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed from (seed, name); Python's hash() is salted per process."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)

"""A seeded pseudo-random bijection on [0, n), computed lazily: ``permute(i)`` for any i without
materialising an O(n) permutation (10^11 tokens / seq_len would not fit in memory).

A balanced Feistel network on 2h bits (the smallest even width with 2^(2h) >= n) is a bijection
on [0, 4^h); cycle-walking (apply it again while the value is >= n) restricts it to a
bijection on [0, n). Since 4^h < 4n, a walk takes fewer than 4 rounds on average.
"""

from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 4
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def derive_key(seed: int, tag: str) -> int:
    """A 64-bit key from (seed, tag), stable across processes and Python versions."""
    return int.from_bytes(
        hashlib.blake2b(f"{seed}:{tag}".encode(), digest_size=8).digest(), "little"
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-mixed round function on uint64 arrays."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Permutation:
    """``perm[i]`` for integer arrays ``i`` in [0, n)."""

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"permutation of an empty range (n={n})")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.Generator(np.random.PCG64(key))
        self.keys = rng.integers(0, 2**63, size=ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        s = np.uint64(self.half)
        left, right = x >> s, x & self.mask
        with np.errstate(over="ignore"):
            for k in self.keys:
                left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << s) | right

    def __getitem__(self, i) -> np.ndarray:
        x = np.asarray(i, dtype=np.uint64)
        y = self._feistel(x)
        out = y >= np.uint64(self.n)
        while out.any():  # cycle-walk: stays a bijection restricted to [0, n)
            y[out] = self._feistel(y[out])
            out = y >= np.uint64(self.n)
        return y.astype(np.int64)

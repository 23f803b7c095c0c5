"""Layout-independent data: the global batch of step k is a pure function of (seed, split, k).

Each data-parallel rank asks only for its slice ``[lo, hi)`` of that global batch, so the
samples seen never depend on the number of ranks, and a run resumed at step k sees exactly what
an uninterrupted run sees: there is no iterator state to save.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from plait.seeding import name_seed

Batch = dict[str, torch.Tensor]


def generator(seed: int, tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(name_seed(seed, tag))


class StepData:
    """A dataset addressed by (split, step, slice of the global batch)."""

    task: str = "classification"
    splits: tuple[str, ...] = ("train",)

    def __init__(self, seed: int):
        self.seed = seed

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        raise NotImplementedError  # abstract: every dataset below implements it

    def eval_steps(self, global_batch: int, default: int) -> int:
        """Global batches one evaluation reads (finite data: exactly one pass)."""
        return default

    def describe(self) -> str:
        return type(self).__name__


class IndexedData(StepData):
    """Finite (input, target) tensors; step k takes the next global_batch positions of a stream
    made of per-epoch permutations seeded by (seed, epoch). Evaluation reads in order."""

    def __init__(
        self,
        seed: int,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        super().__init__(seed)
        self.data = {"train": train}
        if test is not None and len(test[0]) > 0:
            self.data["eval"] = test
        self.splits = tuple(self.data)

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs live at a time; the dataset lives for the run
    def _perm(self, epoch: int) -> torch.Tensor:
        n = len(self.data["train"][0])
        return torch.randperm(n, generator=generator(self.seed, f"epoch-{epoch}"))

    def sample(self, split: str, step: int, lo: int, hi: int, global_batch: int) -> Batch:
        x, y = self.data[split]
        n = len(x)
        pos = step * global_batch + torch.arange(lo, hi)
        if split == "train":
            epochs, within = pos // n, pos % n
            idx = torch.stack([self._perm(int(e))[int(w)] for e, w in zip(epochs, within)])
        else:
            idx = pos[pos < n]  # one exact pass: the last global batch may be short
        return {"input": x[idx], "target": y[idx]}

    def eval_steps(self, global_batch: int, default: int) -> int:
        return -(-len(self.data["eval"][0]) // global_batch) if "eval" in self.data else 0

    def __len__(self) -> int:
        return len(self.data["train"][0])

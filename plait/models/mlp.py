"""The seed documents' two multilayer perceptrons.

``seed_mlp`` is the MNIST network of the first seed post: 784-128-64-10, ReLU, trained with
SGD lr 0.01 and cross-entropy. ``seed_bigmodel`` is its "BigModel": 1000-10000-1000-10 with
Adam lr 1e-3 on random batches of 32. Both are stacks of :class:`DenseBlock`, one per Linear,
so a pipeline can cut between any two of them and tensor parallelism can shard each ``fc``.
Optional BatchNorm and dropout follow the seed's regularisation chapter (weight decay is the
optimizer's ``weight_decay``).

Layout note: BatchNorm normalises with the statistics of the batch a forward sees (a dp rank's
slice, a pipeline micro-batch, a grad_accum chunk; as torch DDP does, and SyncBatchNorm is
CUDA-only), and dropout masks depend on each rank's generator; plait.layout_notes says which
layouts change their numbers. Equivalence tests compare them like with like.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.config import Config
from plait.errors import ConfigError
from plait.models.base import PlaitModel
from plait.registry import DATA, register_model


class DenseBlock(nn.Module):
    """Linear, then (hidden blocks only) BatchNorm, ReLU and dropout."""

    def __init__(self, d_in: int, d_out: int, *, last: bool, batchnorm: bool, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out) if batchnorm and not last else None
        self.act = nn.Identity() if last else nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 and not last else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.drop(self.act(x))


class MLP(PlaitModel):
    task = "classification"

    def __init__(self, sizes: list[int], *, batchnorm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.sizes = list(sizes)
        self.in_features, self.num_classes = sizes[0], sizes[-1]
        n = len(sizes) - 1
        self.layers = nn.ModuleDict(
            {
                str(i): DenseBlock(
                    sizes[i], sizes[i + 1], last=i == n - 1, batchnorm=batchnorm, dropout=dropout
                )
                for i in range(n)
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 1, 28, 28) images or (B, D) vectors -> (B, D)
        for block in self.layers.values():
            x = block(x)
        return x  # (B, num_classes) logits

    def tp_plan(self) -> dict[str, str]:
        # Megatron pairing: first Linear column-parallel, second row-parallel (one all-reduce
        # in forward, one in backward), the rest replicated (the classifier is tiny).
        # Styles: plait/tensor_parallel/styles.py.
        plan = {"layers.0.fc": "colwise", "layers.1.fc": "rowwise"}
        plan.update({f"layers.{i}.fc": "replicate" for i in range(2, len(self.layers))})
        return plan


SEED_MLP_SIZES = [784, 128, 64, 10]
SEED_BIGMODEL_SIZES = [1000, 10000, 1000, 10]
SIZES = {"seed_mlp": SEED_MLP_SIZES, "seed_bigmodel": SEED_BIGMODEL_SIZES}


def check_seed(cfg: Config) -> None:
    """One size each; data of a fixed width must be the model's input width."""
    m, d = cfg.model, cfg.data
    if m.preset not in ("tiny", "default"):
        raise ConfigError(
            f"model.preset: {m.preset!r} is not allowed for {m.name}; it has one size ('default')"
        )
    name = m.name.rpartition(":")[2]  # module:name names a built-in too
    width = DATA.get(d.name).in_features
    if width is not None and width != SIZES[name][0]:
        fits = [n for n, sizes in SIZES.items() if sizes[0] == width]
        only = f", which only model.name={' or '.join(fits)} takes" if fits else ""
        raise ConfigError(
            f"data.name: {d.name!r} gives {width} input features{only}; {name} takes "
            f"{SIZES[name][0]}: use data.name=synthetic for {name}"
        )


@register_model("seed_mlp", task="classification", check=check_seed)
def build_seed_mlp(cfg: Config) -> MLP:
    return MLP(SEED_MLP_SIZES, batchnorm=cfg.model.batchnorm, dropout=cfg.model.dropout)


@register_model("seed_bigmodel", task="classification", check=check_seed)
def build_seed_bigmodel(cfg: Config) -> MLP:
    return MLP(SEED_BIGMODEL_SIZES, batchnorm=cfg.model.batchnorm, dropout=cfg.model.dropout)

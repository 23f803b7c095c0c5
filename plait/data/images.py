"""The seed's digit task offline: scikit-learn's bundled 8x8 digits resized to MNIST's 28x28,
or real MNIST IDX files when the user has them."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
import torch.nn.functional as F

from plait.config import Config
from plait.data.base import IndexedData, generator
from plait.errors import PlaitError
from plait.registry import register_data

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MNIST_MEAN) / MNIST_STD


def load_digits_28(eval_fraction: float) -> tuple[tuple, tuple]:
    """sklearn's 1,797 digits, bilinearly upsampled to (1, 28, 28) in [0, 1]; a fixed split
    (seed 0, independent of the training seed) holds out ``eval_fraction`` of them."""
    # deferred: scikit-learn (heavy) only for the digits dataset
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = _normalise(x.clamp(0, 1))
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=generator(0, "digits-split"))
    n_eval = int(round(len(x) * eval_fraction))
    ev, tr = perm[:n_eval], perm[n_eval:]
    return (x[tr], y[tr]), (x[ev], y[ev])


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (LeCun's MNIST format: magic, dims, then uint8 data), plain or .gz."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except OSError as e:
        raise PlaitError(f"cannot read IDX file {str(path)!r}: {e.strerror or e}") from None
    if len(raw) < 4:
        raise PlaitError(
            f"IDX file {str(path)!r} is truncated ({len(raw)} bytes); download it again"
        )
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise PlaitError(
            f"{str(path)!r} is not an unsigned-byte IDX file (magic {raw[:4].hex()}); expected MNIST's 00000801 or 00000803"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PlaitError(f"IDX file {str(path)!r} is truncated in its header; download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = header + int(torch.tensor(dims).prod())
    if len(raw) < need:
        raise PlaitError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, its header promises {need}; download it again"
        )
    return torch.frombuffer(bytearray(raw[header:need]), dtype=torch.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist_idx(folder: str | None, eval_fraction: float) -> tuple[tuple, tuple | None]:
    if not folder:
        raise PlaitError(
            "data.path is not set; mnist_idx needs the folder holding train-images-idx3-ubyte and train-labels-idx1-ubyte"
        )
    base = Path(folder)
    tri, trl = _find(base, "train-images-idx3-ubyte"), _find(base, "train-labels-idx1-ubyte")
    if tri is None or trl is None:
        raise PlaitError(
            f"data.path: {folder!r} lacks train-images-idx3-ubyte / train-labels-idx1-ubyte (plain or .gz)"
        )

    def pair(img: Path, lab: Path) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = read_idx(img), read_idx(lab)
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise PlaitError(
                f"{img.name} ({tuple(x.shape)}) and {lab.name} ({tuple(y.shape)}) do not pair up as images and labels"
            )
        return _normalise(x[:, None].float() / 255.0), y.long()

    train = pair(tri, trl)
    tei, tel = _find(base, "t10k-images-idx3-ubyte"), _find(base, "t10k-labels-idx1-ubyte")
    if tei is not None and tel is not None:
        return train, pair(tei, tel)
    x, y = train
    perm = torch.randperm(len(x), generator=generator(0, "mnist-split"))
    n_eval = int(round(len(x) * eval_fraction))
    return (x[perm[n_eval:]], y[perm[n_eval:]]), (x[perm[:n_eval]], y[perm[:n_eval]])


class Digits(IndexedData):
    def __init__(self, seed: int, eval_fraction: float):
        super().__init__(seed, *load_digits_28(eval_fraction))


class MnistIdx(IndexedData):
    def __init__(self, seed: int, folder: str | None, eval_fraction: float):
        super().__init__(seed, *load_mnist_idx(folder, eval_fraction))


@register_data("digits", tasks=("classification",), in_features=28 * 28)
def build_digits(cfg: Config, model) -> Digits:
    return Digits(cfg.train.seed, cfg.data.eval_fraction)


@register_data("mnist_idx", tasks=("classification",), in_features=28 * 28)
def build_mnist_idx(cfg: Config, model) -> MnistIdx:
    return MnistIdx(cfg.train.seed, cfg.data.path, cfg.data.eval_fraction)

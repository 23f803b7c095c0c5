"""Data never depends on the layout: the global batch of step k is fixed by (seed, k), and the
dp ranks' slices put together are exactly that batch."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from plait.data import read_idx
from plait.data.images import Digits, MnistIdx
from plait.data.synthetic import SyntheticTokens, SyntheticVectors
from plait.data.text import ByteText
from plait.errors import PlaitError


def _datasets(tmp_path):
    _write_mnist(tmp_path, n=40)
    return [
        SyntheticVectors(0, 12, 5),
        SyntheticTokens(0, 256, 16),
        ByteText(0, 16, 0.1),
        Digits(0, 0.1),
        MnistIdx(0, str(tmp_path), 0.25),
    ]


@pytest.mark.parametrize("dp", [2, 4])
def test_rank_slices_compose_the_global_batch(tmp_path, dp):
    B = 8
    for data in _datasets(tmp_path):
        for step in (0, 3, 11):  # step 11 wraps the 40-sample IDX set into a new epoch
            whole = data.sample("train", step, 0, B, B)
            parts = [
                data.sample("train", step, r * B // dp, (r + 1) * B // dp, B) for r in range(dp)
            ]
            for k in whole:
                assert torch.equal(torch.cat([p[k] for p in parts]), whole[k]), (data, k)
            again = data.sample("train", step, 0, B, B)
            assert all(torch.equal(whole[k], again[k]) for k in whole)  # resume sees the same batch
        assert not torch.equal(
            data.sample("train", 0, 0, B, B)["input"], data.sample("train", 1, 0, B, B)["input"]
        )


def test_epochs_visit_every_sample_once(tmp_path):
    _write_mnist(tmp_path, n=40)
    data = MnistIdx(0, str(tmp_path), 0.0)
    seen = torch.cat([data.sample("train", s, 0, 8, 8)["target"] for s in range(5)])
    assert sorted(seen.tolist()) == sorted(data.data["train"][1].tolist())


def test_digits_are_mnist_shaped_with_a_held_out_split():
    d = Digits(0, 0.1)
    x, y = d.data["train"]
    assert x.shape[1:] == (1, 28, 28) and len(d.data["eval"][0]) == 180 and len(x) == 1797 - 180
    assert d.eval_steps(64, 4) == 3  # one exact pass over 180 held-out images
    assert len(d.sample("eval", 2, 0, 64, 64)["target"]) == 180 - 128


def test_text_targets_are_inputs_shifted():
    b = ByteText(0, 32, 0.1).sample("train", 0, 0, 4, 4)
    assert torch.equal(b["input"][:, 1:], b["target"][:, :-1])
    assert b["input"].max() < 256


def test_text_corpus_errors(tmp_path):
    with pytest.raises(PlaitError, match="too few"):
        ByteText(0, 64, 0.1, str(tmp_path))  # empty folder
    with pytest.raises(PlaitError, match="does not exist"):
        ByteText(0, 64, 0.1, str(tmp_path / "nope"))


def _idx_bytes(arr: torch.Tensor) -> bytes:
    return (
        bytes([0, 0, 8, arr.dim()])
        + struct.pack(f">{arr.dim()}I", *arr.shape)
        + bytes(arr.flatten().tolist())
    )


def _write_mnist(folder, n=40, gz=False):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    for name, arr in (("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return imgs, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    imgs, labels = _write_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    assert torch.equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), imgs)
    assert torch.equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}"), labels)
    d = MnistIdx(0, str(tmp_path), 0.25)
    assert len(d.data["train"][0]) == 30 and len(d.data["eval"][0]) == 10


def test_bad_idx_files_give_one_line_errors(tmp_path):
    _write_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(PlaitError, match="truncated: 1000 bytes"):
        read_idx(p)
    p.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(PlaitError, match="not an unsigned-byte IDX file"):
        read_idx(p)
    p.write_bytes(b"\x00")
    with pytest.raises(PlaitError, match="truncated"):
        read_idx(p)
    with pytest.raises(PlaitError, match="lacks train-images"):
        MnistIdx(0, str(tmp_path / "empty"), 0.1)
    with pytest.raises(PlaitError, match="data.path is not set"):
        MnistIdx(0, None, 0.1)

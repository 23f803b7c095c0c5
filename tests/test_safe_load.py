"""No file in a checkpoint folder or an ``init_from`` file can run code (docs/design.md, promise 7).

Each payload writes a marker file when unpickled and then returns the real object, as an attacker
would, so a loader that runs it would otherwise succeed. The manifest is recomputed after
tampering (whoever crafts the files can do that too), so only the reader itself can refuse.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from helpers import run_single
from plait.checkpoint import export_checkpoint
from plait.errors import PlaitError
from plait.safe_load import dcp_load

pytestmark = pytest.mark.timeout(300)

RUN = [
    "data.name=synthetic",
    "model.n_layers=2",
    "data.seq_len=16",
    "train.global_batch=4",
    "train.steps=2",
    "optim.warmup_steps=1",
    "checkpoint.every=1",
    "checkpoint.keep=1",
]


class Payload:
    """Unpickles to ``real`` after creating ``marker``: code execution, made visible."""

    def __init__(self, marker: Path, real: object):
        self.marker, self.real = str(marker), pickle.dumps(real)

    def __reduce__(self):
        code = (
            f"(open({self.marker!r}, 'w').close(), "
            f"__import__('pickle').loads(bytes.fromhex({self.real.hex()!r})))[1]"
        )
        return eval, (code,)


def _remanifest(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["files"] = {
        rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in m["files"]
    }
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    run_single(RUN, d)
    (ckpt,) = (d / "checkpoints").glob("step-*")
    return d, ckpt


def _copy(run, tmp_path) -> tuple[Path, Path]:
    import shutil

    d, ckpt = run
    shutil.copytree(d, tmp_path / "r")
    return tmp_path / "r", tmp_path / "r" / "checkpoints" / ckpt.name


def _evil_metadata(ckpt: Path, marker: Path) -> None:
    real = pickle.loads((ckpt / ".metadata").read_bytes())
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker, real)))
    _remanifest(ckpt)


def _evil_step(ckpt: Path, marker: Path) -> None:
    """Re-save the checkpoint with its ``extra.step`` item replaced by a payload."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt, ckpt.parent / "whole.pt")
    state = torch.load(ckpt.parent / "whole.pt", weights_only=False)  # our own file
    state["extra"]["step"] = Payload(marker, state["extra"]["step"])
    dcp.save(state, checkpoint_id=str(ckpt), no_dist=True)
    (ckpt.parent / "whole.pt").unlink()
    _remanifest(ckpt)


@pytest.mark.parametrize(
    "tamper, export_reads_it",
    [(_evil_metadata, True), (_evil_step, False)],  # export reads the weights only
    ids=["metadata", "extra.step"],
)
def test_payload_refused_by_resume_and_export(run, tmp_path, tamper, export_reads_it):
    d, ckpt = _copy(run, tmp_path)
    marker = tmp_path / "pwned"
    tamper(ckpt, marker)
    with pytest.raises(PlaitError, match=str(ckpt)) as e:
        run_single([*RUN, "train.steps=3"], d)
    assert "\n" not in str(e.value)
    if export_reads_it:
        with pytest.raises(PlaitError, match=str(ckpt)):
            export_checkpoint(ckpt, tmp_path / "out.safetensors")
    else:
        assert export_checkpoint(ckpt, tmp_path / "out.safetensors") == 2
    assert not marker.exists(), "a checkpoint file ran code"


def test_export_verifies_the_manifest(run, tmp_path):
    _, ckpt = _copy(run, tmp_path)
    data = bytearray((ckpt / "__0_0.distcp").read_bytes())
    data[100:108] = bytes(b ^ 0xFF for b in data[100:108])  # damaged bytes, same size
    (ckpt / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(PlaitError, match="SHA-256"):
        export_checkpoint(ckpt, tmp_path / "out.safetensors")


def test_untampered_checkpoint_still_loads_safely(run, tmp_path):
    _, ckpt = _copy(run, tmp_path)
    meta = pickle.loads((ckpt / ".metadata").read_bytes())
    state = {"extra": {"step": 0}}
    dcp_load(state, ckpt, no_dist=True)
    assert state["extra"]["step"] == 2 and meta.state_dict_metadata
    assert export_checkpoint(ckpt, tmp_path / "w.safetensors") == 2


def test_rng_payload_is_not_run_and_resume_goes_on(run, tmp_path):
    d, ckpt = _copy(run, tmp_path)
    marker = tmp_path / "pwned"
    rng = ckpt / "rng" / "rank-0.pt"
    torch.save({"cpu": Payload(marker, torch.get_rng_state())}, rng)
    _remanifest(ckpt)
    with pytest.warns(UserWarning, match="rank-0.pt"):
        res = run_single([*RUN, "train.steps=3"], d)
    assert [m["step"] for m in res.metrics] == [3]
    assert not marker.exists()


MALFORMED = {
    "empty": b"",
    "short header": b"\x08\x00",
    "huge header length": (1 << 60).to_bytes(8, "little") + b"{}",
    "header not json": (4).to_bytes(8, "little") + b"abcd",
    "offsets past the end": (b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'),
    "bad dtype": b'{"w":{"dtype":"Q77","shape":[1],"data_offsets":[0,4]}}    ',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_init_from_gets_one_line(run, tmp_path, name):
    body = MALFORMED[name]
    if body.startswith(b"{"):
        body = len(body).to_bytes(8, "little") + body
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(body)
    with pytest.raises(
        PlaitError, match=r"checkpoint.init_from: .*bad.safetensors.* safetensors"
    ) as e:
        run_single([*RUN[:-2], f"checkpoint.init_from={bad}"], tmp_path / "r")
    assert "\n" not in str(e.value)

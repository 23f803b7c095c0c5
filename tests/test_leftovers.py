"""Resume over what a killed job or a person leaves behind: a renamed copy
of a checkpoint, a half-written metrics line, a manifest that is not an object, a refused rng
file; and a restart that finds no verifiable checkpoint never deletes or overwrites the
folders it could not verify."""

from __future__ import annotations

import json
import shutil

import torch

from helpers import losses, run_single
from plait.checkpoint import list_checkpoints

GPT = [
    "model.n_layers=1",
    "model.dim=32",
    "model.n_heads=2",
    "data.seq_len=16",
    "train.global_batch=4",
    "train.steps=4",
    "optim.warmup_steps=0",
    "model.dropout=0.1",
    "checkpoint.every=2",
    "checkpoint.keep=5",
]


def _messages(recwarn) -> str:
    return "\n".join(str(w.message) for w in recwarn)


def test_resume_skips_leftovers_with_a_warning_each(tmp_path, recwarn):
    straight = run_single(GPT, tmp_path)
    root = tmp_path / "checkpoints"
    shutil.rmtree(root / "step-00000004")  # killed after saving step 2
    shutil.copytree(root / "step-00000002", root / "step-00000016.bak")
    (root / "step-00000012").mkdir()
    (root / "step-00000012" / "manifest.json").write_text("[]")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')  # killed mid-write
    resumed = run_single(GPT, tmp_path)
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert losses(resumed) == losses(straight)[2:]
    for k, v in straight.state.items():
        assert torch.equal(v, resumed.state[k]), k
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    said = _messages(recwarn)
    assert "step-00000016.bak' is not a checkpoint name" in said
    assert "step-00000012' does not match its manifest.json" in said
    assert "metrics.jsonl' line 5 is not a JSON record" in said
    assert (root / "step-00000016.bak").is_dir()  # never pruned nor touched


def test_a_refused_rng_file_warns_and_the_run_continues(tmp_path, recwarn):
    run_single(GPT, tmp_path)
    root = tmp_path / "checkpoints"
    shutil.rmtree(root / "step-00000004")
    rng = root / "step-00000002" / "rng" / "rank-0.pt"
    torch.save({"cpu": torch.nn.Linear(1, 1)}, rng)  # a module: weights_only refuses it
    manifest = json.loads((root / "step-00000002" / "manifest.json").read_text())
    from plait.checkpoint_files import _sha256

    manifest["files"]["rng/rank-0.pt"] = _sha256(rng)  # so that the checksums still pass
    (root / "step-00000002" / "manifest.json").write_text(json.dumps(manifest))
    resumed = run_single(GPT, tmp_path)
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert "rank-0.pt' not restored" in _messages(recwarn)


def test_a_restart_never_prunes_or_overwrites_unverifiable_checkpoints(tmp_path, recwarn):
    ov = GPT[:-1] + ["checkpoint.keep=1"]
    first = run_single(ov, tmp_path)
    root = tmp_path / "checkpoints"
    (root / "step-00000004" / "manifest.json").unlink()  # unverifiable, maybe intact
    assert [c.name for c in list_checkpoints(root)] == []
    first_lines = (tmp_path / "metrics.jsonl").read_text()
    again = run_single(ov, tmp_path)  # nothing to resume: starts at step 1
    assert [m["step"] for m in again.metrics] == [1, 2, 3, 4]
    assert losses(again) == losses(first)
    kept = root / "step-00000004.replaced-1"
    assert kept.is_dir() and not (kept / "manifest.json").exists()  # set aside, not deleted
    assert [c.name for c in list_checkpoints(root)] == ["step-00000004"]  # keep=1
    assert (tmp_path / "metrics.jsonl.replaced-1").read_text() == first_lines
    assert "existed: kept it as" in _messages(recwarn)

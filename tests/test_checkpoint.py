"""Checkpoints: bit-identical resume, atomic writes, keep-K, export/import, and loading under a
different layout (DDP on 2 ranks -> 1 process) continuing on the same trajectory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import assert_same_run, losses, run_distributed, run_distributed_many, run_single
from plait.checkpoint import is_complete, list_checkpoints

GPT = [
    "model.n_layers=2",
    "data.seq_len=32",
    "train.global_batch=8",
    "train.steps=8",
    "optim.warmup_steps=2",
    "model.dropout=0.1",
]


def crash_after(ckpt_root, step):
    """Leave the folder as a job killed right after saving ``step`` would."""
    for c in list_checkpoints(ckpt_root):
        if int(c.name.split("-")[1]) > step:
            shutil.rmtree(c)


def test_resume_is_bit_identical(tmp_path):
    ov = GPT + ["checkpoint.every=4", "checkpoint.keep=5"]
    straight = run_single(ov, tmp_path / "a")
    root = straight.run_dir / "checkpoints"
    assert [c.name for c in list_checkpoints(root)] == ["step-00000004", "step-00000008"]
    crash_after(root, 4)
    resumed = run_single(ov, tmp_path / "a")  # same run folder: auto-resume from step 4
    assert [m["step"] for m in resumed.metrics] == [5, 6, 7, 8]
    assert losses(resumed) == losses(straight)[4:]  # dropout RNG restored too
    for k, v in straight.state.items():
        assert torch.equal(v, resumed.state[k]), k
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 9))


def test_incomplete_checkpoints_are_never_picked_up(tmp_path):
    ov = GPT + ["checkpoint.every=2", "checkpoint.keep=2", "train.steps=6"]
    res = run_single(ov, tmp_path)
    root = res.run_dir / "checkpoints"
    assert [c.name for c in list_checkpoints(root)] == ["step-00000004", "step-00000006"]  # keep=2
    newest = root / "step-00000006"
    assert is_complete(newest, verify=True)
    (newest / "manifest.json").unlink()  # interrupted before the manifest was written
    shutil.copytree(root / "step-00000004", root / ".tmp-step-00000008")  # interrupted mid-write
    assert [c.name for c in list_checkpoints(root)] == ["step-00000004"]
    victim = next(p for p in (root / "step-00000004").rglob("*.distcp"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert not is_complete(root / "step-00000004", verify=True)  # checksums catch corruption


def test_export_and_init_from_round_trip(tmp_path):
    res = run_single(GPT + ["checkpoint.every=8"], tmp_path / "a")
    out = tmp_path / "w.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "plait.cli", "export", str(res.run_dir / "checkpoints" / "step-00000008"), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    exported = load_file(str(out))
    assert exported.keys() == res.state.keys()
    for k, v in res.state.items():
        assert torch.equal(exported[k], v), k
    again = run_single(
        GPT
        + ["train.steps=1", "optim.warmup_steps=0", f"checkpoint.init_from={out}", "optim.lr=1e-9"],
        tmp_path / "b",
    )
    for k, v in res.state.items():
        torch.testing.assert_close(again.state[k], v, rtol=0, atol=1e-6)


@pytest.mark.timeout(240)
def test_ddp_checkpoint_resumes_in_one_process(tmp_path):
    ov = GPT + ["model.dropout=0.0", "checkpoint.every=4", "train.grad_clip=1.0"]
    straight = run_single(ov, tmp_path / "one")
    two = run_distributed(ov, 2, tmp_path / "two")
    crash_after(two.run_dir / "checkpoints", 4)
    resumed = run_single(ov, tmp_path / "two")  # saved by 2 ranks, loaded by 1, optimizer included
    assert [m["step"] for m in resumed.metrics] == [5, 6, 7, 8]
    for x, y in zip(losses(straight)[4:], losses(resumed)):
        assert abs(x - y) / x < 1e-5, (losses(straight), losses(resumed))
    for k, v in straight.state.items():
        torch.testing.assert_close(resumed.state[k], v, rtol=1e-4, atol=1e-5)


def test_async_save_commits_and_resumes(tmp_path):
    ov = GPT + [
        "checkpoint.every=2",
        "checkpoint.async=true",
        "checkpoint.keep=10",
        "train.steps=6",
    ]
    straight = run_single(ov, tmp_path)
    root = straight.run_dir / "checkpoints"
    assert [c.name for c in list_checkpoints(root)] == [
        "step-00000002",
        "step-00000004",
        "step-00000006",
    ]
    assert all(is_complete(c, verify=True) for c in list_checkpoints(root))
    crash_after(root, 2)
    assert losses(run_single(ov, tmp_path)) == losses(straight)[2:]


@pytest.mark.timeout(240)
def test_pipeline_checkpoint_resumes_in_one_process(tmp_path):
    ov = GPT + ["model.dropout=0.0", "checkpoint.every=4", "parallel.pp_microbatches=2"]
    straight = run_single(ov, tmp_path / "one")
    two = run_distributed(ov + ["parallel.pp=2"], 2, tmp_path / "pp")
    info = json.loads((two.run_dir / "run.json").read_text())  # whole model, not rank 0's stage
    assert info["launched_by"] == "plait train --nproc", info
    assert info["params"] == sum(v.numel() for v in straight.state.values()), info
    crash_after(two.run_dir / "checkpoints", 4)
    resumed = run_single(ov, tmp_path / "pp")  # 2 pipeline stages -> 1 process, optimizer included
    for x, y in zip(losses(straight)[4:], losses(resumed)):
        assert abs(x - y) / x < 1e-5, (losses(straight), losses(resumed))
    for k, v in straight.state.items():
        torch.testing.assert_close(resumed.state[k], v, rtol=1e-4, atol=1e-5)


def test_every_torch_load_in_plait_is_weights_only():
    """Safe loading: a checkpoint a user hands in can hold tensors, never code to run."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls = []
    for pkg in ("plait", "ddp", "pipeline", "tensor_parallel", "launch"):
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    safe = any(
                        k.arg == "weights_only" and ast.unparse(k.value) == "True"
                        for k in node.keywords
                    )
                    calls.append((f"{path.relative_to(root)}:{node.lineno}", safe))
    assert calls, "the scan found no torch.load at all: it is looking in the wrong place"
    assert all(safe for _, safe in calls), [c for c, safe in calls if not safe]


@pytest.mark.timeout(400)
def test_deepspeed_checkpoints_resume_export_and_refuse_other_engines(tmp_path):
    """DeepSpeed runs save their own files behind plait's Checkpointer: resuming ZeRO-0/2/3 at
    step 3 continues the straight run exactly; ``plait export`` consolidates the weights (equal
    to the run's at step 3) for any other layout; a torch-engine run refuses the folder clearly."""
    from safetensors.torch import load_file

    from plait.checkpoint import export_checkpoint
    from plait.errors import PlaitError

    ov = GPT + ["model.dropout=0.0", "train.steps=6", "checkpoint.every=3", "checkpoint.keep=5",
                "optim.name=adam", "parallel.dp_engine=deepspeed"]  # fmt: skip
    stages = [0, 2, 3]
    straight = run_distributed_many(
        [ov + [f"parallel.zero_stage={z}"] for z in stages], 2, tmp_path / "straight"
    )
    cks = []
    for z, res in zip(stages, straight):
        src = res.run_dir / "checkpoints" / "step-00000003"
        assert json.loads((src / "manifest.json").read_text())["format"] == "deepspeed"
        cks.append(tmp_path / f"ck{z}")
        shutil.copytree(src, cks[-1] / src.name)
    # and a seed checkpoint (other weights than init would give) starts a DeepSpeed ZeRO-3 run
    from plait.checkpoint import write_seed_checkpoint
    from plait.config import load_config

    seed = tmp_path / "seed.safetensors"
    write_seed_checkpoint(load_config(None, GPT + ["train.seed=5"]), seed)
    seeded = [
        "model.dropout=0.0",
        "train.steps=3",
        "optim.name=adam",
        f"checkpoint.init_from={seed}",
    ]
    resumed = run_distributed_many(
        [ov + [f"parallel.zero_stage={z}", f"checkpoint.dir={ck}"] for z, ck in zip(stages, cks)]
        + [GPT + seeded + ["parallel.dp_engine=deepspeed", "parallel.zero_stage=3"]],
        2,
        tmp_path / "resumed",
    )
    one_seeded = run_single(GPT + seeded, tmp_path / "one_seeded")
    assert_same_run(one_seeded, resumed.pop())  # the seed's weights, not DeepSpeed's own init
    for z, a, b in zip(stages, straight, resumed):
        assert [m["step"] for m in b.metrics] == [4, 5, 6], z
        assert losses(b) == losses(a)[3:], (z, losses(a), losses(b))
    one = run_single(
        GPT + ["model.dropout=0.0", "train.steps=3", "optim.name=adam"], tmp_path / "one"
    )
    for z, ck in zip(stages, cks):
        export_checkpoint(ck / "step-00000003", tmp_path / f"w{z}.safetensors")
        got = load_file(str(tmp_path / f"w{z}.safetensors"))
        assert got.keys() == one.state.keys()
        for k, v in one.state.items():
            torch.testing.assert_close(
                got[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k, z=z: f"{z} {k}: {m}"
            )
    torch_engine = [o for o in ov if not o.startswith("parallel.dp_engine")]  # only that differs
    with pytest.raises(PlaitError, match="dp_engine=deepspeed.*plait export"):
        run_single(torch_engine + [f"checkpoint.dir={cks[1]}"], tmp_path / "torch")


def test_seed_checkpoint_holds_the_initial_weights_and_starts_any_run(tmp_path):
    from safetensors.torch import load_file

    from plait.cli import main

    out = tmp_path / "seed.safetensors"
    assert main(["seed", "configs/gpt_tiny.yaml", str(out), *GPT[:2]]) == 0
    ov = GPT + ["model.dropout=0.0", "train.steps=2"]
    first = run_single(
        ov + ["optim.lr=1e-12", "train.steps=1", "optim.warmup_steps=0"], tmp_path / "a"
    )
    seed = load_file(str(out))
    assert seed.keys() == first.state.keys()
    for k, v in first.state.items():  # lr ~0: the weights after one step are the initial ones
        torch.testing.assert_close(seed[k], v, rtol=0, atol=1e-9)
    assert losses(run_single(ov + [f"checkpoint.init_from={out}"], tmp_path / "b")) == losses(
        run_single(ov, tmp_path / "c")
    )


def test_corrupted_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    """A truncated file in the newest checkpoint fails its manifest's checksum: the run resumes
    from the one before, says so, and ends on the straight run's losses."""
    ov = GPT + ["model.dropout=0.0", "checkpoint.every=4", "checkpoint.keep=5"]
    straight = run_single(ov, tmp_path / "a")
    root = straight.run_dir / "checkpoints"
    crash_after(root, 8)  # step 4 and step 8 exist; damage step 8, then rerun from scratch
    victim = max((root / "step-00000008").rglob("*.distcp"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step-00000008.*resuming from the previous one"):
        again = run_single(ov + ["train.steps=8"], tmp_path / "a")
    assert [m["step"] for m in again.metrics] == [5, 6, 7, 8]
    assert losses(again) == losses(straight)[4:]


def test_resume_to_a_longer_run_follows_the_new_schedule_from_its_first_step(
    tmp_path, capsys, monkeypatch
):
    """8 steps, then the same folder continued to 16 (and a new warmup): every resumed step's lr
    is the one a straight run of the new config uses at that step, and rank 0 says the schedule
    changed. The first run writes checkpoints as plait did before, with the scheduler's state
    (which once gave step 9 the 8-step cosine's final lr 0.0): they still resume."""
    from plait import checkpoint as ck

    app_state = ck.app_state

    def old_format(model, optimizer, extra, *, loading=False):
        if not loading:
            extra = {**extra, "scheduler": {"last_epoch": 8, "_last_lr": [0.0, 0.0]}}
        return app_state(model, optimizer, extra, loading=loading)

    ov = GPT + ["model.dropout=0.0", "checkpoint.every=4"]
    with monkeypatch.context() as m:
        m.setattr(ck, "app_state", old_format)
        first = run_single(ov, tmp_path / "a")
    assert first.metrics[-1]["lr"] > 0 and first.metrics[-1]["step"] == 8
    capsys.readouterr()
    longer = ["train.steps=16", "optim.warmup_steps=3"]
    resumed = run_single(ov + longer, tmp_path / "a")
    straight = run_single(ov + longer + ["checkpoint.every=0"], tmp_path / "b")
    assert [m["step"] for m in resumed.metrics] == list(range(9, 17))
    want = [m["lr"] for m in straight.metrics[8:]]
    assert [m["lr"] for m in resumed.metrics] == want, ([m["lr"] for m in resumed.metrics], want)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "lr schedule changed" in ln)
    assert "optim.warmup_steps 2 -> 3, train.steps 8 -> 16" in line, line


def test_resume_refuses_a_config_that_changes_the_numbers_unless_allowed(tmp_path):
    """A seed or optimizer change on resume is refused in one line naming the keys, before any
    rank starts (plait train --nproc) or any step runs; with checkpoint.allow_config_change the
    run continues, warns, and the optimizer runs with the new hyperparameters."""
    from helpers import make_config
    from plait import checkpoint as ck
    from plait.errors import ConfigError
    from plait.launch import run_local
    from plait.models import build_model
    from plait.optim import build_optimizer

    ov = GPT + ["model.dropout=0.0", "checkpoint.every=4", "checkpoint.keep=5"]
    run_single(ov, tmp_path / "a")
    root = tmp_path / "a" / "checkpoints"
    changed = ov + ["train.seed=1", "optim.weight_decay=0.1", "train.steps=12"]
    want = r"step-00000008.*optim\.weight_decay 0\.0 -> 0\.1, train\.seed 0 -> 1; .*allow_config"
    with pytest.raises(ConfigError, match=want):
        run_single(changed, tmp_path / "a")
    with pytest.raises(ConfigError, match=want):  # raised in this process: no rank was started
        run_local(make_config(changed, tmp_path / "a"), 2)
    assert [c.name for c in list_checkpoints(root)] == ["step-00000004", "step-00000008"]
    allow = changed + ["checkpoint.allow_config_change=true"]
    with pytest.warns(UserWarning, match="changed config.*optim.weight_decay 0.0 -> 0.1"):
        res = run_single(allow, tmp_path / "a")
    assert [m["step"] for m in res.metrics] == [9, 10, 11, 12]
    cfg = make_config(allow, tmp_path / "a")
    model = build_model(cfg)
    model.to_empty(device="cpu")
    opt = build_optimizer(model, cfg.optim)
    assert ck.load(root / "step-00000008", model, opt) == 8
    assert opt.state and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]

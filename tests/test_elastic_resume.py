"""Auto-resume without a person: under torchrun's elastic restarts, a rank killed mid-run makes
torchrun restart the group, which continues from the newest complete checkpoint in the same run
folder and ends on the same trajectory as a run that never failed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from launch_helpers import CONFIG, ROOT, metrics, plait_launch

from helpers import run_single

# Test-only fault (a sitecustomize on PYTHONPATH, no hook in plait): on the first attempt rank 1
# dies as soon as the step-4 checkpoint is complete, i.e. mid-way through step 5 or 6.
KILL_AFTER_STEP_4 = """import os, threading, time
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    def _watch(path=os.environ["PLAIT_TEST_CKPT"] + "/step-00000004/manifest.json"):
        while not os.path.exists(path):
            time.sleep(0.01)
        os._exit(3)
    threading.Thread(target=_watch, daemon=True).start()
"""
JOB = [
    "train.steps=8", "optim.warmup_steps=1", "model.n_layers=2", "data.seq_len=32", "train.eval_every=0",
    "log.every=1", "log.wandb=off", "log.tensorboard=false", "log.progress=off", "checkpoint.every=2",
]  # fmt: skip


def _inject(tmp_path: Path, sitecustomize: str) -> tuple[Path, dict[str, str]]:
    """The run folder, and the environment that loads the fault into every Python process."""
    run = tmp_path / "run"
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(sitecustomize)
    return run, {
        "PYTHONPATH": str(tmp_path / "inject"),
        "PLAIT_TEST_CKPT": str(run / "checkpoints"),
    }


def _assert_same_trajectory(ref, run: Path) -> list[dict]:
    got = metrics(run)
    assert [m["step"] for m in got] == list(range(1, 9))  # redone steps replace the lost ones
    for a, b in zip(ref.metrics, got):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-5, (a, b)
    return got


@pytest.mark.timeout(240)
def test_killed_rank_restarts_and_resumes_from_the_last_checkpoint(tmp_path):
    ref = run_single(JOB, tmp_path / "ref", config=str(ROOT / CONFIG))
    run, env = _inject(tmp_path, KILL_AFTER_STEP_4)
    r = plait_launch(
        "torchrun", CONFIG, *JOB, "--run-dir", str(run), "--nproc", "2", "--max-restarts", "1",
        "--rdzv-timeout", "60", timeout=200, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:]
    assert "failed (exitcode: 3) local_rank: 1" in r.stdout, r.stdout[-3000:]  # it did die
    assert "resumed from" in r.stdout and "step-00000004 (step 4)" in r.stdout, r.stdout[-3000:]
    _assert_same_trajectory(ref, run)


# On the first attempt rank 1 SIGKILLs itself once the step-4 checkpoint is complete (a flag
# file marks that it did). Workers of ``plait train --nproc`` are spawned by multiprocessing,
# which sets RANK only after the interpreter (and this sitecustomize) started: wait for it.
SIGKILL_AFTER_STEP_4 = """import os, signal, threading, time
def _watch(path=os.environ.get("PLAIT_TEST_CKPT", "") + "/step-00000004/manifest.json"):
    while "RANK" not in os.environ:
        time.sleep(0.01)
    flag = os.environ.get("PLAIT_TEST_CKPT", "") + "/../killed-once"
    if os.environ["RANK"] != "1" or os.path.exists(flag):
        return
    while not os.path.exists(path):
        time.sleep(0.01)
    open(flag, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=_watch, daemon=True).start()
"""


@pytest.mark.timeout(240)
def test_plait_train_nproc_restarts_a_sigkilled_rank_and_ends_on_the_same_loss(tmp_path):
    """The issue's own words: ``plait train --nproc 2`` with restarts; SIGKILL at a chosen step."""
    import subprocess
    import sys

    ref = run_single(JOB, tmp_path / "ref", config=str(ROOT / CONFIG))
    run, env = _inject(tmp_path, SIGKILL_AFTER_STEP_4)
    r = subprocess.run(
        ["timeout", "-k", "5", "200", sys.executable, "-m", "plait.cli", "train", CONFIG, *JOB,
         "--nproc", "2", "--max-restarts", "1", "--run-dir", str(run)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "exitcode: -9) local_rank: 1" in out, out[-3000:]  # rank 1 died of SIGKILL
    assert "step-00000004 (step 4)" in out, out[-3000:]  # and resumed from the last checkpoint
    got = _assert_same_trajectory(ref, run)
    assert got[-1]["loss"] == pytest.approx(ref.metrics[-1]["loss"], rel=1e-5)

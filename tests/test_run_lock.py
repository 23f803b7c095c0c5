"""One job per run folder: a second job is refused in one line naming the
holder; a lock file left by a job that died is taken over with a warning; the lock is gone
when the job ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import make_config, run_single
from plait.errors import PlaitError
from plait.launch import run_local
from plait.run_lock import NAME, acquire

TINY = ["model.n_layers=1", "model.dim=32", "model.n_heads=2", "data.seq_len=16",
        "train.global_batch=4", "train.steps=2", "optim.warmup_steps=0"]  # fmt: skip


def test_a_second_job_in_a_held_run_folder_is_refused_naming_the_holder(tmp_path):
    with acquire(tmp_path):  # the first job (a flock is per open file: this process counts)
        with pytest.raises(PlaitError) as e:
            run_single(TINY, tmp_path)
        msg = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()} (started 20" in msg, msg
        assert "in use by" in msg and "\n" not in msg
        with pytest.raises(PlaitError, match="in use by"):  # the launching parent refuses too
            run_local(make_config(TINY, tmp_path), 2)
    assert not (tmp_path / NAME).exists()
    assert not (tmp_path / "metrics.jsonl").exists()  # the refused job wrote nothing


def test_a_lock_left_by_a_dead_job_is_taken_over_with_a_warning(tmp_path, recwarn):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    left = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01T00:00"}
    (tmp_path / NAME).write_text(json.dumps(left))  # killed -9: file stays, its flock does not
    res = run_single(TINY, tmp_path)
    assert [m["step"] for m in res.metrics] == [1, 2]
    said = "\n".join(str(w.message) for w in recwarn)
    assert f"was left by pid {left['pid']} on host" in said and "taking the run folder over" in said
    assert not (tmp_path / NAME).exists()  # released at the end

"""The cause first (docs/design.md, "When a rank fails"): a failing job's last line names the
real cause from the failing rank; an error that will repeat ends the job without a restart; a
failed save removes its partial folder; what this host can tell is refused before any rank
starts; a busy rendezvous port is an error, never a silent wait."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from launch_helpers import CONFIG, ROOT, free_port, plait_launch

from helpers import run_single
from plait import failure
from plait.cli import main as cli
from plait.errors import ConfigError, PlaitError

QUIET = ["log.wandb=off", "log.tensorboard=false", "log.progress=off", "train.eval_every=0"]
TINY = [
    *QUIET,
    "model.n_layers=2",
    "data.seq_len=16",
    "train.global_batch=4",
    "data.name=synthetic",
]


def _plait(*args: str, env: dict | None = None, limit_bytes: int | None = None, timeout=150):
    """``plait ARGS`` as a user runs it (``timeout -k``); ``limit_bytes``: no process of the job
    may write a file past that size (RLIMIT_FSIZE, inherited by the ranks): a real EFBIG from
    the kernel, as a full disk gives ENOSPC."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        ["timeout", "-k", "5", str(timeout), sys.executable, "-m", "plait.cli", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        preexec_fn=limit if limit_bytes else None,
    )  # fmt: skip


def _last(r) -> str:
    return (r.stdout + r.stderr).strip().splitlines()[-1]


class _Held:
    """A port another program listens on (and never answers)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


# ---------------------------------------------------------------- which errors repeat (unit)


def test_which_errors_repeat_and_their_one_line(tmp_path, monkeypatch):
    disk = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise disk
        except OSError as e:
            raise RuntimeError("rank 1 failed at step 3: a long\nmulti-line text") from e
    except RuntimeError as e:
        wrapped = e
    dcp_like = RuntimeError("CheckpointException ranks:dict_keys([1])")
    dcp_like.failures = {1: (ConfigError("model.x: bad"), "traceback text")}
    assert failure.will_repeat(wrapped) and failure.one_line(wrapped).startswith(
        "OSError: [Errno 28]"
    )
    assert failure.will_repeat(dcp_like) and failure.one_line(dcp_like) == "model.x: bad"
    assert failure.will_repeat(PlaitError("loss is nan"))
    peer = RuntimeError("Connection closed by peer\n[../gloo/transport]")
    assert not failure.will_repeat(peer) and failure.one_line(peer) == (
        "RuntimeError: Connection closed by peer [../gloo/transport]"
    )
    # ranks record, the launcher reads: a final failure wins over an earlier transient one
    monkeypatch.setenv(failure.ENV, str(tmp_path))
    failure.record(peer, rank=0)
    failure.record(wrapped, rank=1)
    got = failure.pick(tmp_path, 0, "fallback")
    assert (got.rank, got.final) == (1, True)
    failure.clear(tmp_path)
    assert failure.pick(tmp_path, 1, "failed: exit code -9") == failure.Failure(
        1, "failed: exit code -9", final=False
    )


# ---------------------------------------------------------------- before any rank starts


def _refused(capsys, monkeypatch, *args: str) -> str:
    """``plait ARGS`` in this process must refuse before a rank or a launcher starts: the one
    line it prints."""
    import torch.distributed.launcher.api as elastic

    import plait.launch.cli as launch_cli

    def no_rank(*a, **k):
        raise AssertionError("a rank was started")

    monkeypatch.setattr(elastic, "elastic_launch", no_rank)
    monkeypatch.setattr(launch_cli, "run", no_rank)
    assert cli(list(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_refused_before_any_rank_starts(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = ["--run-dir", str(tmp_path / "run")]
    train = ["train", CONFIG, *TINY, "--nproc", "2"]
    line = _refused(capsys, monkeypatch, *train, *run, "data.name=stdlib_text", "data.path=/nope/x")
    assert "data.path: '/nope/x' does not exist" in line, line
    line = _refused(capsys, monkeypatch, *train, "--run-dir", str(a_file / "run"))
    assert f"log.run_dir: '{a_file}/run' cannot be a folder: '{a_file}' is a file" in line, line
    line = _refused(capsys, monkeypatch, *train, *run, "checkpoint.init_from=/nope/w.safetensors")
    assert "checkpoint.init_from: '/nope/w.safetensors' is not a file" in line, line
    line = _refused(capsys, monkeypatch, *train, *run, "model.preset=8b")
    assert "model: gpt preset 8b needs ~" in line and "by plait plan's estimate, more than" in line
    assert "(2 ranks x " in line or torch.cuda.is_available(), line
    # the same through a launcher, and for one process with no launcher at all
    launch = ["launch", "torchrun", CONFIG, *TINY, "--nproc", "2", *run]
    line = _refused(capsys, monkeypatch, *launch, "checkpoint.init_from=/nope/w.safetensors")
    assert "checkpoint.init_from: '/nope/w.safetensors' is not a file" in line, line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a host without CUDA
    line = _refused(capsys, monkeypatch, "train", CONFIG, *TINY, *run, "train.device=cuda")
    assert line.startswith("plait: error: train.device: 'cuda' is not allowed here"), line


@pytest.mark.timeout(60)
def test_read_only_run_folder_is_refused_before_any_rank_starts(tmp_path):
    """Permissions do not stop root, so the check runs as an unprivileged user when the test
    runs as root: the folder is tried for real, as a rank would."""
    top = Path(tempfile.mkdtemp(prefix="plait-ro-"))  # pytest's folders are closed to others
    try:
        os.chmod(top, 0o755)
        (ro := top / "ro").mkdir(mode=0o555)
        os.chmod(ro, 0o555)
        code = (
            "import os\nfrom plait.config import load_config\n"
            "from plait.host_check import check_files\n"
            f"cfg = load_config({CONFIG!r}, ['log.run_dir={ro}/run'])\n"
            "if os.getuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
            "check_files(cfg)\n"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    finally:
        shutil.rmtree(top)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"PlaitError: log.run_dir: '{ro}/run' cannot be written (Permission denied" in _last(r)


# ---------------------------------------------------------------- busy ports


def test_busy_rendezvous_port_is_refused_and_port_is_honoured(capsys, monkeypatch, tmp_path):
    run = ["--run-dir", str(tmp_path / "run")]
    with _Held() as held:
        line = _refused(
            capsys, monkeypatch, "launch", "torchrun", CONFIG, *TINY, *run, "--nproc", "2",
            "--rdzv-endpoint", f"127.0.0.1:{held.port}",
        )  # fmt: skip
        assert f"--rdzv-endpoint: port {held.port} on 127.0.0.1 is in use" in line, line
        line = _refused(
            capsys, monkeypatch, "launch", "torchrun", CONFIG, *TINY, *run, "--port", str(held.port)
        )
        assert f"--port: port {held.port} on 127.0.0.1 is in use" in line, line
    # --port on one node is the rendezvous port (it was silently dropped for --standalone)
    port = free_port()
    assert cli(["launch", "torchrun", CONFIG, *TINY, *run, "--port", str(port), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"--rdzv-endpoint 127.0.0.1:{port}" in out and "--standalone" not in out, out


@pytest.mark.timeout(90)
def test_hand_set_master_port_held_ends_every_rank_in_one_line(tmp_path):
    """``python -m plait.train`` with RANK/MASTER_PORT set by hand: rank 0 cannot listen, rank 1
    would wait forever on a listener that never answers; both end in one line naming the port,
    rank 1 within parallel.timeout_s."""
    with _Held() as held:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(held.port), "WORLD_SIZE": "2"}
        procs = [
            subprocess.Popen(
                [
                    "timeout",
                    "-k",
                    "5",
                    "60",
                    sys.executable,
                    "-m",
                    "plait.train",
                    CONFIG,
                    *TINY,
                    f"log.run_dir={tmp_path / f'r{rank}'}",
                    "parallel.timeout_s=3",
                ],
                cwd=ROOT,
                env={**os.environ, **env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for rank in (0, 1)
        ]
        outs = [p.communicate() for p in procs]
    for rank, (p, (_out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 2, (rank, p.returncode, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert str(held.port) in last and "set MASTER_PORT to a free port" in last, last
    assert "is in use" in outs[0][1] and "no rendezvous answered" in outs[1][1]


# ---------------------------------------------------------------- failing ranks, restarts left


def _tries(out: str) -> int:
    return 1 + out.count("restarting the ranks")


@pytest.mark.timeout(240)
def test_errors_that_repeat_end_the_job_at_once_with_the_cause_last(tmp_path):
    """Under ``--max-restarts``: a shape mismatch on resume (with MASTER_PORT held: plait's own
    launch picks its ports), a full disk at the first save, and a NaN stop through torchrun each
    end after one try, the failing rank's cause on the last line; the failed save's .tmp folder
    is gone."""
    # a checkpoint of a dim-64 model, resumed by a dim-32 one (config change allowed)
    run = tmp_path / "shape"
    run_single([*TINY, "train.steps=2", "checkpoint.every=2"], run, config=str(ROOT / CONFIG))
    with _Held() as held:
        r = _plait(
            "train", CONFIG, *TINY, "--nproc", "2", "--max-restarts", "1", "--run-dir", str(run),
            "train.steps=4", "checkpoint.every=2", "model.dim=32", "model.n_heads=2",
            "checkpoint.allow_config_change=true", env={"MASTER_PORT": str(held.port)},
        )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 2 and _tries(out) == 1, out[-3000:]
    assert _last(r).startswith("plait: error: rank "), _last(r)
    assert (
        "step-00000002': shape of tok_embeddings.weight [256,64] does not match the model's [256,32]"
        in _last(r)
    )

    full = tmp_path / "full"
    r = _plait(
        "train", CONFIG, *TINY, "--nproc", "2", "--max-restarts", "2", "--run-dir", str(full),
        "train.steps=4", "checkpoint.every=2", "model.dim=64", limit_bytes=256 * 1024,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 2 and _tries(out) == 1, out[-3000:]
    assert "checkpoint save to" in _last(r) and "File too large" in _last(r), _last(r)
    assert "the partial folder is removed" in _last(r), _last(r)
    left = [p.name for p in (full / "checkpoints").iterdir()]
    assert left == [], left  # no .tmp-step folder keeps the disk full

    nan = tmp_path / "nan"
    bad = ["optim.name=sgd", "optim.lr=1e12", "train.grad_clip=0", "optim.warmup_steps=0"]
    r = plait_launch(
        "torchrun", CONFIG, *TINY, *bad, "train.steps=20", "--nproc", "2", "--max-restarts", "2",
        "--run-dir", str(nan), "--rdzv-timeout", "60", timeout=150,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout[-3000:]
    assert r.stdout.count("plait | gpt_tiny") == 1, r.stdout[-3000:]  # one try: no restart
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("plait: error: rank ") and "lower optim.lr" in last, last
    steps = [json.loads(x)["step"] for x in (nan / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # one run's steps, not a restarted second

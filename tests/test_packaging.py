"""One import namespace from five root folders: the editable install and a built wheel both
import plait, plait.ddp, plait.pipeline, plait.tensor_parallel and plait.launch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "plait",
    "plait.ddp",
    "plait.pipeline",
    "plait.tensor_parallel",
    "plait.launch",
    "plait.models",
    "plait.data",
    "plait.plan",
    "plait.observe",
]
CHECK = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; import plait.ddp as d; print(d.__file__)"


def test_editable_install_imports_all_subpackages():
    r = subprocess.run(
        [sys.executable, "-c", CHECK, *SUBPACKAGES], capture_output=True, text=True, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ddp/__init__.py")


@pytest.mark.timeout(300)
def test_wheel_contains_and_imports_all_subpackages(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(tmp_path.glob("plait-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in SUBPACKAGES:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, pkg
    assert any(n.endswith("entry_points.txt") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(target)!r}] + [p for p in {sys.path!r} if 'site-packages' in p]; " + CHECK, *SUBPACKAGES],
        capture_output=True, text=True, cwd=str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith(str(target))

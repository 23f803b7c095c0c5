"""One import namespace from five root folders: the editable install and a built wheel both
import plait, plait.ddp, plait.pipeline, plait.tensor_parallel and plait.launch."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout, once per module."""
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.glob("plait-*.whl"))


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel and nothing of the checkout. Its third-party dependencies
    (the pinned CPU torch, numpy, ...) come from this venv's site-packages through a .pth path
    line (a plain path: the checkout's editable-install finder is not run), since unpacking torch
    again takes minutes here; a full ``pip install torch==2.13.0 <wheel>`` into a fresh venv was
    checked by hand and runs the same job."""
    import torch

    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip())  # fmt: skip
    (site / "deps.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


@pytest.mark.timeout(300)
def test_wheel_contains_and_imports_all_subpackages(wheel, wheel_venv, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in SUBPACKAGES:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, pkg
    assert any(n.endswith("entry_points.txt") for n in names)
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert shipped and all(f"plait/configs/{n}" in names for n in shipped)
    r = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", CHECK, *SUBPACKAGES],
        capture_output=True, text=True, cwd=str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith(str(wheel_venv))
    plait_bin = str(wheel_venv / "bin" / "plait")
    r = subprocess.run([plait_bin, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "plait 0.1.0", r.stdout + r.stderr
    r = subprocess.run(
        [plait_bin, "config", "show", "gpt_tiny", "train.steps=20"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0 and "steps: 20" in r.stdout, r.stdout + r.stderr


@pytest.mark.timeout(900)
def test_wheel_trains_a_shipped_config_by_name_from_an_empty_folder(wheel_venv, tmp_path):
    """The main job, as a user outside the repository runs it (slow: ~2-4 min on 2 busy cores)."""
    r = subprocess.run(
        [str(wheel_venv / "bin" / "plait"), "train", "gpt_tiny", "--nproc", "2", "train.steps=20"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=850,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run_dir = tmp_path / r.stdout.strip().splitlines()[-1].removeprefix("run folder: ")
    assert (run_dir / "metrics.jsonl").is_file(), r.stdout[-2000:]
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 20

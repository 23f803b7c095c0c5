"""The import graph runs one way: pyproject's import-linter contracts (layers from the CLI down
to config, models and data free of parallel wrappers, launch free of the trainer, plan free of
torch.distributed, no cycles) hold, and plait.plan's own code imports no torch.distributed."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pyproject's package-dir: subpackages kept in top-level folders, mapped into plait.*
FOLDERS = {
    "ddp": "ddp",
    "pipeline": "pipeline",
    "tensor_parallel": "tensor_parallel",
    "launch": "launch",
}


def namespace_copy(dest: Path) -> Path:
    """The sources laid out as their import names (plait/ddp/..., ...), for tools that walk
    folders; returns the folder to put on PYTHONPATH."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "plait", dest / "plait", ignore=ignore)
    for name, folder in FOLDERS.items():
        shutil.copytree(ROOT / folder, dest / "plait" / name, ignore=ignore)
    return dest


def test_import_contracts_hold(tmp_path):
    tree = namespace_copy(tmp_path / "src")
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run(
        [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout, r.stdout[-4000:]


def test_plan_code_imports_no_torch_distributed():
    for f in sorted((ROOT / "plait" / "plan").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            bad = [n for n in names if n.startswith("torch.distributed")]
            assert not bad, f"{f.name}:{node.lineno} imports {bad}"

"""README's "Bring your own model" section runs as written (a fresh interpreter, an empty
folder): the snippet is the documentation, so it must not rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Bring your own model", 1)[1].split("\n#", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(300)
def test_readme_bring_your_own_model_runs_as_written(tmp_path):
    code = _snippet()
    assert len(code.strip().splitlines()) <= 20
    check = "\nassert len(result.metrics) == 3 and all(m['loss'] > 0 for m in result.metrics)\n"
    r = subprocess.run(
        [sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "step     3" in r.stdout

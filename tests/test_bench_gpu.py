"""bench/gpu.py --dry-run: the GPU check's own code path at tiny size, so it cannot rot. The
figures are not checked (CI never depends on them), only that every row ran and says how."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_prints_and_writes_its_table(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check" in proc.stdout and "ratio" in proc.stdout
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    for name in (
        "raw torch loop, compile off", "plait step, compile off",
        "raw torch loop, compile on", "plait step, compile on", "FSDP2 world size 1, compile off",
    ):  # fmt: skip
        assert rows[name]["tokens_per_s"] > 0 and rows[name]["mfu"] > 0, rows[name]
        assert name in proc.stdout
    assert rows["plait step, compile on"]["extra"]["ratio_vs_raw"] > 0
    assert rows["DCP save + load (model + optimizer)"]["extra"]["restored"] is True
    cuda = json.loads(out.read_text())["meta"]["device"] != "cpu"
    if not cuda:  # every CPU row says so; the CUDA-only row says it was skipped
        assert rows["gloo init + first all-reduce"]["note"].startswith("cpu")
        assert rows["peak memory: plait vs plait plan"]["note"] == "skipped (CUDA only)"
        assert all(r["note"].startswith(("cpu", "skipped")) for r in rows.values()), rows

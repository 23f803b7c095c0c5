"""The docs build with ``mkdocs build --strict`` (broken links and pages fail), and the
generated configuration reference names every key of the dataclasses."""

from __future__ import annotations

import html
import subprocess
import sys
from pathlib import Path

import yaml

from plait.config_reference import config_keys

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_strict_and_the_reference_lists_every_key(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    page = html.unescape((site / "configuration" / "index.html").read_text())
    for k in config_keys():
        assert f"<code>{k.key}</code>" in page, k.key
        assert html.unescape(k.help.split("(")[0].strip()) in page, k.key


def test_every_nav_page_exists_except_the_design_page_written_separately():
    class _Loader(yaml.SafeLoader):
        pass

    cfg = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)  # noqa: S506
    pages = [next(iter(item.values())) for item in cfg["nav"]]
    missing = [p for p in pages if not (ROOT / "docs" / p).is_file() and p != "design.md"]
    assert not missing
    assert "design.md" in pages

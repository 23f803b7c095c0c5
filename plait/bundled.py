"""The example configs shipped inside the package (``plait/configs/*.yaml``), found by name.

``plait train gpt_tiny`` works from any folder, editable install or wheel: a name without a
path separator or ``.yaml`` suffix that is not a file here is looked up among these. The
repository's top-level ``configs`` is a symlink to the same folder, so ``configs/gpt_tiny.yaml``
keeps working in a checkout.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    """Names of the shipped configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path | None:
    """The YAML file ``path`` names: the path itself when it exists, else a shipped config of
    that name (``gpt_tiny`` or ``gpt_tiny.yaml``); None when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    if p.parent == Path("."):
        shipped = CONFIG_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
        if shipped.is_file():
            return shipped
    return None

"""Every config key with its type, default and help, read from the dataclasses in
:mod:`plait.config` (the one source): ``plait config keys``, ``plait config show`` and the
docs' configuration reference all come from here, so none can drift from the code."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from plait.config import Config, _describe, _key


@dataclass(frozen=True)
class KeyInfo:
    key: str  # dotted, e.g. train.steps
    type: str  # what values are allowed, in words
    default: Any
    help: str


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def config_keys() -> list[KeyInfo]:
    """Every leaf key of :class:`Config`, in declaration order."""
    out = []
    hints = typing.get_type_hints(Config)
    for top in dataclasses.fields(Config):
        sub = hints[top.name]
        if not dataclasses.is_dataclass(sub):
            out.append(KeyInfo(_key(top), _describe(sub), _default(top), top.metadata["help"]))
            continue
        sub_hints = typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            out.append(
                KeyInfo(
                    f"{top.name}.{_key(f)}", _describe(sub_hints[f.name]), _default(f),
                    f.metadata["help"],
                )
            )  # fmt: skip
    return out


def _value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def format_keys(prefix: str = "") -> str:
    """``plait config keys [PREFIX]``: one block per key (key, type, default, then help)."""
    rows = [k for k in config_keys() if k.key.startswith(prefix)]
    return "\n".join(f"{k.key} = {_value(k.default)}    ({k.type})\n    {k.help}" for k in rows)


def format_config(cfg: Config) -> str:
    """``plait config show``: the resolved config as YAML a run would accept as its file."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None).rstrip()


def markdown_reference() -> str:
    """The docs' configuration reference: a table per section."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the dataclasses in `plait/config.py` (`plait config keys` prints the same).",
        "Set a key in the YAML file or on the command line as `section.key=value`.",
    ]
    current = None
    for k in config_keys():
        section = k.key.split(".")[0] if "." in k.key else "top level"
        if section != current:
            current = section
            lines += [
                "",
                f"## {section}",
                "",
                "| key | type | default | help |",
                "|---|---|---|---|",
            ]
        cells = [f"`{k.key}`", k.type, f"`{_value(k.default)}`", k.help.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

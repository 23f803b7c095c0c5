"""mkdocs hook: the configuration reference page is generated from the dataclasses in
plait/config.py at build time, so it can never disagree with the code."""

from __future__ import annotations

MARKER = "<!-- plait:config-keys -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from plait.config_reference import markdown_reference

    return markdown.replace(MARKER, markdown_reference().split("\n", 1)[1])

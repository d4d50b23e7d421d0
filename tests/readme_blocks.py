"""The code blocks of one README section, as the tests that run the README's words read them."""

from __future__ import annotations

from collections.abc import Collection

from markdown_it import MarkdownIt


def code_blocks(markdown: str, section: str, languages: Collection[str]) -> list[str]:
    """The code blocks in `languages` under the heading `section`, up to the next heading of its
    level or above."""
    tokens = MarkdownIt().parse(markdown)
    blocks: list[str] = []
    level: int | None = None
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            depth = int(token.tag[1:])
            if level is not None and depth <= level:
                break
            if level is None and tokens[i + 1].content.strip() == section:
                level = depth
        elif level is not None and token.type == "fence" and token.info.partition(" ")[0] in languages:
            blocks.append(token.content)
    return blocks

"""The README's sample settings file ("Configure it"), pasted as it stands: a daemon starts on it."""

from __future__ import annotations

from pathlib import Path

from markdown_it import MarkdownIt

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "Configure it"


def toml_blocks(markdown: str, section: str) -> list[str]:
    """The TOML code blocks under the heading `section`, up to the next heading of its level or above."""
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
        elif level is not None and token.type == "fence" and token.info.strip() == "toml":
            blocks.append(token.content)
    return blocks


def test_the_sample_settings_start_a_daemon_as_pasted(spawn_daemon, tmp_path: Path) -> None:
    (sample,) = toml_blocks(README.read_text(encoding="utf-8"), SECTION)
    (tmp_path / "tesserad.toml").write_text(sample)
    # Only the ports are moved (another process may hold the sample's); the flags win over the file.
    ports = ("--listen", "--metrics-listen", "--http-listen", "--oip-http-listen")
    flags = [part for flag in ports for part in (flag, "127.0.0.1:0")]
    daemon = spawn_daemon("--config", "tesserad.toml", *flags, cwd=tmp_path)
    daemon.wait_serving()

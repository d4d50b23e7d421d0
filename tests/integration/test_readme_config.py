"""The README's sample settings file ("Configure it"), pasted as it stands: a daemon starts on it."""

from __future__ import annotations

from pathlib import Path

from tests.readme_blocks import code_blocks

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "Configure it"


def test_the_sample_settings_start_a_daemon_as_pasted(spawn_daemon, tmp_path: Path) -> None:
    (sample,) = code_blocks(README.read_text(encoding="utf-8"), SECTION, {"toml"})
    (tmp_path / "tesserad.toml").write_text(sample)
    # Only the ports are moved (another process may hold the sample's); the flags win over the file.
    ports = ("--listen", "--metrics-listen", "--http-listen", "--oip-http-listen")
    flags = [part for flag in ports for part in (flag, "127.0.0.1:0")]
    daemon = spawn_daemon("--config", "tesserad.toml", *flags, cwd=tmp_path)
    daemon.wait_serving()

"""What the tests of downloads across a broken stream share: the hidden partial files a download
leaves beside its destination, and a progress callback that cuts the connection midway."""

from __future__ import annotations

from pathlib import Path

from tests.tcp_proxy import CuttableProxy


def partials(directory: Path) -> list[str]:
    """The hidden files (partial downloads and their records) in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


class CutOnce:
    """A progress callback that cuts `proxy` once the download is past half way, `wanted` cuts
    in all."""

    def __init__(self, proxy: CuttableProxy, wanted: int = 1) -> None:
        self.proxy = proxy
        self.wanted = wanted

    def __call__(self, done: int, total: int) -> None:
        if done >= total // 2 and self.proxy.cuts < self.wanted:
            self.proxy.cut()

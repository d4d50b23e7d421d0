"""The daemon itself: version, devices, data directory, and a live stream of resource use."""

from __future__ import annotations

from pathlib import Path

from tessera.backup import ArchiveError, Manifest, read_archive
from tessera.calls import C, Op, Part, Save, ServerStream, call, stream
from tessera.errors import DataLoss
from tessera.transfer import new_partial
from tessera.v1 import system_pb2 as pb

S = "System"


class BackupSink:
    """Writes a streamed backup to `path` through a new temp file beside it, which becomes
    `path` only once the whole archive is read back and checks out (`finish`); `abort`
    removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial, self._file = new_partial(path)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> Manifest:
        """The manifest of the backup now at `path`; DataLoss (nothing left) when what came is
        not a whole backup."""
        try:
            self._file.close()
            manifest = read_archive(self._partial)
        except ArchiveError as exc:
            self._partial.unlink(missing_ok=True)
            raise DataLoss(f"the backup that arrived is not whole: {exc}; take it again") from None
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        self._partial.replace(self.path)
        return manifest

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class System(Part[C]):
    """`client.system`: what the daemon is and what it is using."""

    @call
    def info(self) -> Op[pb.ServerInfo]:
        """Version, uptime, devices (CPU then GPUs), data directory usage, services served."""
        return Op(S, "GetServerInfo", pb.GetServerInfoRequest())

    @stream
    def watch(
        self, interval_ms: int = 1000, max_samples: int = 0, timeout: float | None = None
    ) -> ServerStream[pb.SystemSample]:
        """A CPU/memory/GPU sample every `interval_ms` (100..60000) until `max_samples` have
        come (0: until you stop iterating). `timeout` bounds the whole stream (None: none)."""
        request = pb.WatchSystemRequest(interval_ms=interval_ms, max_samples=max_samples)
        return ServerStream(S, "WatchSystem", request, timeout)

    @call
    def backup(self, path: str | Path, chunk_size: int = 0, timeout: float | None = None) -> Save[Manifest]:
        """Save a consistent backup of the daemon (admin only) to `path`, which appears only once
        the whole archive has come and checks out; its manifest. `tesserad restore` restores it."""
        return Save(
            S,
            "Backup",
            pb.BackupRequest(chunk_size=chunk_size),
            timeout or self._conn.transfer_timeout,
            lambda: BackupSink(Path(path)),
            lambda response: response.data,
        )

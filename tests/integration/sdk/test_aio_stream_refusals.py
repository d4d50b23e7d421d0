"""The asyncio client reports the daemon's own answer to a client stream it refuses while
requests are still being sent, as the blocking client does: grpc.aio's request writer put its
own INTERNAL "Internal error from Core" over that answer when a write in flight met the end of
the call (grpc/grpc#36066), losing the daemon's code, message and trailers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tessera
import tessera.aio

# Refusals of an upload in a row: grpc.aio's writer lost the answer to about one in twenty.
_TRIES = 100


def test_an_upload_refused_at_its_header_says_the_daemons_words(daemon, tmp_path: Path) -> None:
    # 64 chunks of 64 KiB: most are still to be written, waiting on a full window, when the
    # daemon refuses the header.
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * (64 * 65536))

    async def upload() -> list[BaseException]:
        errors: list[BaseException] = []
        async with tessera.aio.Client(daemon.target, timeout=30) as aio:
            for _ in range(_TRIES):
                try:
                    await aio.training.log_artifact("r-missing", source, chunk_size=65536)
                except tessera.TesseraError as error:
                    errors.append(error)
        return errors

    errors = asyncio.run(upload())
    assert len(errors) == _TRIES
    for error in errors:
        assert isinstance(error, tessera.NotFound), error
        assert "r-missing" in str(error), error

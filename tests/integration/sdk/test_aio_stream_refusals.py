"""The asyncio client reports the daemon's own answer to a client stream it refuses while
requests are still being sent, as the blocking client does: grpc.aio's request writer put its
own INTERNAL "Internal error from Core" over that answer when a write in flight met the end of
the call (grpc/grpc#36066), losing the daemon's code, message and trailers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import tessera
import tessera.aio
from tests.conftest import InProcessDaemon, daemon_settings

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


def test_a_prediction_stream_ended_by_a_request_over_the_daemons_limit_says_the_daemons_words(
    tmp_path: Path, make_onnx
) -> None:
    # A request over max_message_size ends the stream while requests under it are still written.
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data", max_message_size="1MiB")).start()
    try:

        def items() -> Iterator[np.ndarray]:
            yield np.ones((100_000, 4), np.float32)  # 1.6 MB
            for _ in range(64):
                yield np.ones((60_000, 4), np.float32)  # under 1 MiB

        async def predict() -> list[BaseException]:
            errors: list[BaseException] = []
            async with tessera.aio.Client(daemon.target, timeout=30) as aio:
                await aio.models.push("affine", make_onnx("m"))
                await aio.inference.load("affine")
                for _ in range(_TRIES // 5):
                    try:
                        async for _ in aio.inference.predict_stream("affine", items()):
                            pass
                    except tessera.TesseraError as error:
                        errors.append(error)
            return errors

        errors = asyncio.run(predict())
    finally:
        daemon.stop()
    assert len(errors) == _TRIES // 5
    for error in errors:
        assert isinstance(error, tessera.ResourceExhausted), error
        assert "max_message_size" in str(error), error

"""Artifact transfer through tesserad vs a plain file copy of the same bytes, in one run.

Starts `tesserad serve` in a temp data directory, uploads a safetensors artifact of --size-mb
with UploadVersion (1 MiB chunks), downloads it back with DownloadVersion into a file, and
copies the same file with shutil (fsynced, as the daemon fsyncs its blobs). Reports MB/s,
the ratio to the copy rate both ways, and the daemon's RSS growth (sampled every 20 ms)
during each transfer. Goals (issue 3): >= 30% of the copy rate, RSS growth < 64 MB.

    .venv/bin/python bench/transfer_bench.py [--size-mb 512]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from daemon_process import start_daemon

from tessera.v1 import architecture_pb2, common_pb2, registry_pb2, registry_pb2_grpc

CHUNK = 1 << 20
RESULTS = Path(__file__).parent / "results" / "transfer_bench.json"


def write_artifact(path: Path, size: int) -> str:
    """A safetensors file of one float32 tensor, ~size bytes; returns its sha256."""
    elements = (size - 256) // 4
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, elements * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as file:
        for piece in (struct.pack("<Q", len(header)), header):
            file.write(piece)
            digest.update(piece)
        remaining = elements * 4
        while remaining:
            piece = block[: min(CHUNK, remaining)]
            file.write(piece)
            digest.update(piece)
            remaining -= len(piece)
    return digest.hexdigest()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Samples a process's RSS while a block runs; .growth is the peak minus the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth = 0

    def __enter__(self) -> RssPeak:
        self.start = rss(self.pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))
        self.growth = self.peak - self.start


def requests(
    path: Path, header: registry_pb2.UploadVersionHeader
) -> Iterator[registry_pb2.UploadVersionRequest]:
    yield registry_pb2.UploadVersionRequest(header=header)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield registry_pb2.UploadVersionRequest(chunk=chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    args = parser.parse_args()
    size = args.size_mb * 2**20
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        root = Path(tmp)
        source = root / "artifact.safetensors"
        sha256 = write_artifact(source, size)
        size = source.stat().st_size

        started = time.perf_counter()
        with source.open("rb") as src, (root / "copy.bin").open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        copy_s = time.perf_counter() - started

        process, address = start_daemon(root / "data")
        try:
            channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 8 << 20)])
            stub = registry_pb2_grpc.RegistryStub(channel)
            header = registry_pb2.UploadVersionHeader(
                model="bench",
                create_model=True,
                format=registry_pb2.ARTIFACT_FORMAT_SAFETENSORS,
                signature=common_pb2.Signature(
                    inputs=[
                        common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])
                    ],
                    outputs=[
                        common_pb2.TensorSpec(
                            name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2]
                        )
                    ],
                ),
                architecture=architecture_pb2.Architecture(
                    input_shape=[4], output_size=2, mlp=architecture_pb2.MlpSpec()
                ),
                sha256=sha256,
                size_bytes=size,
            )
            with RssPeak(process.pid) as upload_rss:
                started = time.perf_counter()
                version = stub.UploadVersion(requests(source, header), timeout=600)
                upload_s = time.perf_counter() - started
            with RssPeak(process.pid) as download_rss:
                started = time.perf_counter()
                digest = hashlib.sha256()
                with (root / "download.bin").open("wb") as out:
                    for message in stub.DownloadVersion(
                        registry_pb2.DownloadVersionRequest(
                            ref=common_pb2.VersionRef(model="bench", version=version.version),
                            chunk_size=CHUNK,
                        ),
                        timeout=600,
                    ):
                        if message.WhichOneof("part") == "chunk":
                            out.write(message.chunk)
                            digest.update(message.chunk)
                    out.flush()
                    os.fsync(out.fileno())
                download_s = time.perf_counter() - started
            assert digest.hexdigest() == sha256, "downloaded bytes differ"
            channel.close()
        finally:
            process.terminate()
            process.wait(30)

    mb = size / 1e6
    result = {
        "size_bytes": size,
        "chunk_bytes": CHUNK,
        "file_copy_mb_s": round(mb / copy_s, 1),
        "upload_mb_s": round(mb / upload_s, 1),
        "download_mb_s": round(mb / download_s, 1),
        "upload_vs_copy": round(copy_s / upload_s, 3),
        "download_vs_copy": round(copy_s / download_s, 3),
        "daemon_rss_growth_upload_mb": round(upload_rss.growth / 1e6, 1),
        "daemon_rss_growth_download_mb": round(download_rss.growth / 1e6, 1),
        "goals": {"min_ratio": 0.3, "max_rss_growth_mb": 64},
        "cpu_count": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The bytes of MLflow's `log_dict`, `log_text` and `log_figure` artifacts, made in memory (or,
for a figure, in a temporary directory) before they are uploaded as a file would be."""

from __future__ import annotations

import hashlib
import importlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tessera.v1 import training_pb2 as pb

YAML_SUFFIXES = (".yaml", ".yml")


def dict_bytes(dictionary: Any, artifact_file: str) -> bytes:
    """`dictionary` as YAML for a .yaml or .yml `artifact_file` (with PyYAML, which the SDK does
    not require), else as JSON indented by 2, as MLflow's log_dict writes it."""
    if PurePosixPath(artifact_file).suffix.lower() in YAML_SUFFIXES:
        try:
            # Imported by name: PyYAML is optional, and its type stubs are not installed.
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise ImportError(
                f"log_dict: writing {artifact_file!r} as YAML needs PyYAML (pip install pyyaml), which "
                "tessera does not install; or give the file a .json name"
            ) from None
        return str(yaml.safe_dump(dictionary, default_flow_style=False, allow_unicode=True)).encode()
    return json.dumps(dictionary, indent=2, ensure_ascii=False).encode()


def figure_bytes(figure: Any, artifact_file: str, save_kwargs: Mapping[str, Any] | None) -> bytes:
    """The image `figure.savefig` writes to a file named as `artifact_file` (matplotlib picks the
    format from its extension), as MLflow's log_figure saves it. ValueError where the name has no
    extension (matplotlib would write the file under another name, with its default one)."""
    name = PurePosixPath(artifact_file).name
    if not PurePosixPath(name).suffix:
        raise ValueError(
            f"log_figure: {artifact_file!r} has no extension, which names the image format; "
            "add one, such as .png, .svg or .pdf"
        )
    with tempfile.TemporaryDirectory(prefix="tessera-figure-") as directory:
        target = Path(directory) / name
        figure.savefig(target, **(save_kwargs or {}))
        return target.read_bytes()


def check_figure(figure: Any) -> None:
    """TypeError unless `figure` can save itself (a matplotlib Figure, or any object with savefig)."""
    if not callable(getattr(figure, "savefig", None)):
        raise TypeError(
            f"log_figure takes a figure with a savefig method (a matplotlib Figure), not {type(figure).__name__}"
        )


def bytes_requests(
    run_id: str, path: str, data: bytes, chunk_size: int
) -> Iterator[pb.UploadRunArtifactRequest]:
    """An artifact upload of `data`: the header with its sha256 and size, then its chunks."""
    digest = hashlib.sha256(data).hexdigest()
    yield pb.UploadRunArtifactRequest(
        header=pb.UploadRunArtifactHeader(run_id=run_id, path=path, sha256=digest, size_bytes=len(data))
    )
    for start in range(0, len(data), chunk_size):
        yield pb.UploadRunArtifactRequest(chunk=data[start : start + chunk_size])

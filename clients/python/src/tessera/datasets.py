"""Datasets: named arrays pushed as npz/npy in chunks, versioned, split, described by statistics."""

from __future__ import annotations

import errno
import hashlib
import io
import numbers
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import BinaryIO, Generic, TypeVar

import numpy as np

from tessera.calls import (
    C,
    Call,
    Chain,
    Decided,
    Given,
    Op,
    Pages,
    Part,
    ResumingDownload,
    Upload,
    call,
    listing,
)
from tessera.errors import DataLoss, DeadlineExceeded
from tessera.messages import dataset_ref, version_number
from tessera.transfer import (
    CHUNK_BYTES,
    Progress,
    ResumableDownloadSink,
    SinkInDirectory,
    bytes_chunks,
    check_chunk_size,
    check_same_file,
    file_chunks,
    file_digest,
    is_download_directory,
    sent_too_much,
)
from tessera.transport import timeout_or
from tessera.v1 import common_pb2
from tessera.v1 import datasets_pb2 as pb

S = "Datasets"

T = TypeVar("T")

Splits = Mapping[str, float] | Mapping[str, Sequence[int]]
"""Fractions by split name ({"train": 0.8, "val": 0.2}) or explicit sample indices per split."""


@dataclass
class Payload:
    """What an upload sends: a file on disk or an npz built in memory, with its hash and size."""

    format: pb.DatasetFormat.ValueType
    sha256: str
    size: int
    path: Path | None = None
    data: bytes = b""

    def chunks(self, chunk_size: int, progress: Progress | None) -> Iterator[bytes]:
        if self.path is not None:
            return file_chunks(self.path, self.size, chunk_size, progress)
        return bytes_chunks(self.data, chunk_size, progress)


def stacking_recipe(join: str = "stack") -> str:
    """How a folder of per-sample .npy files and a labels.csv become one dataset: `join` is
    "stack" for files of one sample each, "concatenate" for files that keep a leading axis of 1."""
    return (
        "stack the samples into one array and push it with its labels, e.g.\n"
        "  import csv, numpy as np\n"
        '  rows = list(csv.DictReader(open("labels.csv")))  # columns: file,label\n'
        f'  x = np.{join}([np.load(r["file"]) for r in rows])  # (N, ...): one row per sample\n'
        '  y = np.array([int(r["label"]) for r in rows])\n'
        '  np.savez("d.npz", x=x, y=y)\n'
        "then `tessera datasets push NAME d.npz` (or client.datasets.push(NAME, x=x, y=y))"
    )


def check_dataset_path(path: object) -> None:
    """TypeError saying what to pass for a `path` that is no file path: a pandas DataFrame or an
    array, as a notebook holds its data, went on to fail in pathlib ("expected str, bytes or
    os.PathLike object, not DataFrame")."""
    if path is None or isinstance(path, str | os.PathLike):
        return
    kind = type(path).__name__
    if hasattr(path, "columns") and hasattr(path, "to_numpy"):
        raise TypeError(
            f"push: path takes a .npz/.npy file, not a {kind}; pass its columns as named arrays, "
            "e.g. push(NAME, x=df[features].to_numpy(np.float32), y=df[label].to_numpy())"
        )
    if isinstance(path, np.ndarray | list | tuple) or hasattr(path, "__array__"):
        raise TypeError(
            f"push: path takes a .npz/.npy file, not an array ({kind}); pass arrays by name, e.g. push(NAME, x=x, y=y)"
        )
    raise TypeError(
        f"push: path takes a .npz/.npy file (str or Path), or leave it out and pass arrays (x=..., y=...), got {kind}"
    )


def payload(path: str | Path | None, arrays: Mapping[str, np.typing.ArrayLike]) -> Payload:
    """A .npz/.npy file as it is, or the named arrays written as an uncompressed little-endian npz."""
    if path is not None and arrays:
        raise ValueError("push: pass a file path or arrays (x=..., y=...), not both")
    if path is not None:
        path = Path(path)
        formats = {".npz": pb.DATASET_FORMAT_NPZ, ".npy": pb.DATASET_FORMAT_NPY}
        if path.suffix.lower() not in formats and not path.exists():
            # A mistyped name is the likelier fault than the format: say so before any recipe.
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        if path.suffix.lower() not in formats:
            raise ValueError(f"{path}: datasets are .npz or .npy files; {stacking_recipe()}")
        sha256, size = file_digest(path)
        return Payload(formats[path.suffix.lower()], sha256, size, path=path)
    if not arrays:
        raise ValueError("push: pass a .npz/.npy path or at least one array, e.g. x=..., y=...")
    buffer = io.BytesIO()
    write_npz(buffer, arrays)
    data = buffer.getvalue()
    return Payload(pb.DATASET_FORMAT_NPZ, hashlib.sha256(data).hexdigest(), len(data), data=data)


def pushed_arrays(
    parameters: Mapping[str, object],
    arrays: Mapping[str, np.typing.ArrayLike] | None,
    named_arrays: Mapping[str, np.typing.ArrayLike],
) -> Mapping[str, np.typing.ArrayLike]:
    """`push`'s arrays, from its `arrays=` mapping or its keywords. TypeError for both at once,
    and for an array given for one of its `parameters`: one named like a parameter (`seed`) is
    that parameter to Python, and was taken for it (an array for a seed) without a word."""
    for parameter, value in parameters.items():
        if isinstance(value, np.ndarray | list | tuple):
            raise TypeError(
                f"push: {parameter}= is push's own parameter, not an array; to push an array named "
                f"{parameter!r}, pass the arrays as a mapping: arrays={{{parameter!r}: ...}}"
            )
    if arrays is None:
        return named_arrays
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"push: arrays= takes a mapping of names to arrays ({{'x': x, 'y': y}}), got {type(arrays).__name__}"
        )
    if named_arrays:
        raise TypeError("push: pass the arrays as arrays={...} or as keywords (x=..., y=...), not both")
    return arrays


def write_npz(file: str | Path | BinaryIO, arrays: Mapping[str, np.typing.ArrayLike]) -> None:
    """The named arrays written as an uncompressed little-endian npz, one at a time. As np.savez
    writes it, but from a mapping: its keyword arguments would refuse arrays named file or
    allow_pickle."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ValueError(
                    f"array {name!r}: object arrays cannot be stored (mixed or text columns make "
                    "one); convert it to a numeric dtype, e.g. df.to_numpy(np.float32) for a pandas "
                    "DataFrame of numeric columns, or x.astype(np.float32)"
                )
            if array.dtype.byteorder == ">":  # the daemon stores little-endian (FITS data, say, is not)
                array = array.astype(array.dtype.newbyteorder("<"))
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def split_spec(splits: Splits | None, seed: int) -> pb.SplitSpec | None:
    if not splits:
        return None
    # numbers.Real takes numpy's scalars too (np.float32 is no float subclass).
    is_fraction = {
        name: isinstance(v, numbers.Real) and not isinstance(v, bool) for name, v in splits.items()
    }
    if all(is_fraction.values()):
        fractions = [pb.SplitFraction(name=name, fraction=float(f)) for name, f in splits.items()]  # type: ignore[arg-type]
        return pb.SplitSpec(fractions=pb.FractionSplit(splits=fractions, seed=seed))
    if any(is_fraction.values()):
        listed = ", ".join(
            f"{name!r} {'a fraction' if frac else 'indices'}" for name, frac in is_fraction.items()
        )
        raise ValueError(
            f"splits: give every split a fraction or every split its indices, not both ({listed})"
        )
    indices = [pb.SplitIndices(name=name, indices=sample_indices(name, idx)) for name, idx in splits.items()]
    return pb.SplitSpec(indices=pb.IndexSplit(splits=indices))


def sample_indices(name: str, given: object) -> list[int]:
    """A split's sample indices as ints; ValueError for anything else, which int() would have
    turned into other samples without a word (1.5 into 1) or failed on with a bare TypeError."""
    if isinstance(given, np.ndarray) and given.ndim == 1 and given.dtype.kind in "iu":
        return [int(i) for i in given.tolist()]
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise ValueError(f"splits[{name!r}]: give a fraction or a list of sample indices, got {given!r}")
    indices = []
    for index in given:
        if isinstance(index, bool | np.bool_) or not isinstance(index, numbers.Integral):
            raise ValueError(
                f"splits[{name!r}]: sample indices are whole numbers (int or a numpy integer), got "
                f"{index!r}; pass the indices themselves, e.g. range(80)"
            )
        indices.append(int(index))
    return indices


def upload_requests(
    name: str,
    body: Payload,
    *,
    splits: Splits | None,
    seed: int,
    array_name: str,
    allow_nonfinite: bool,
    description: str,
    tags: Mapping[str, str] | None,
    chunk_size: int,
    progress: Progress | None,
) -> Iterator[pb.UploadDatasetRequest]:
    header = pb.UploadDatasetHeader(
        name=name,
        format=body.format,
        sha256=body.sha256,
        size_bytes=body.size,
        allow_nonfinite=allow_nonfinite,
        array_name=array_name,
        description=description,
        tags=tags,
    )
    spec = split_spec(splits, seed)
    if spec is not None:
        header.splits.CopyFrom(spec)
    yield pb.UploadDatasetRequest(header=header)
    for chunk in body.chunks(chunk_size, progress):
        yield pb.UploadDatasetRequest(chunk=chunk)


@dataclass(frozen=True)
class SplitRows:
    """Which rows of a dataset version a split holds: its sample indices, ascending, the order a
    training job reads them in."""

    version: pb.DatasetVersion
    split: str
    indices: np.ndarray


class _MemorySink(Generic[T]):
    """Keeps a download in memory, never more than `_size` says its header's stream holds; a
    stream broken midway goes on from the bytes held (`offset`), a later header naming the same
    file. `finish` makes the result of them (`_made`)."""

    # Making the result puts no file in place: a cancelled load need not wait for it.
    finish_publishes = False

    def __init__(self) -> None:
        self._header: pb.DatasetVersion | None = None
        self._data = bytearray()
        # Where the stream being received started (the offset asked for).
        self._stream_from = 0

    def _what(self, header: pb.DatasetVersion) -> str:
        """What is downloaded, in messages: "clips:1"."""
        return version_name(header)

    def _size(self, header: pb.DatasetVersion) -> int:
        return header.size_bytes

    def _made(self, header: pb.DatasetVersion, data: bytes) -> T:
        raise NotImplementedError

    def resuming(self) -> bool:
        # Nothing outlives a load: there are never bytes of an earlier one to go on from.
        return False

    def offset(self) -> int:
        return len(self._data)

    def start(self, header: pb.DatasetVersion) -> None:
        if self._header is None:
            self._header = header
        else:
            check_same_file(self._header, header, self.changed)
        self._stream_from = len(self._data)

    def changed(self, how: str) -> DataLoss:
        assert self._header is not None, "changed before any header"
        return DataLoss(f"{self._what(self._header)} changed while it was loading ({how}); load it again")

    def how_to_go_on(self) -> str:
        return "load it again"

    def write(self, chunk: bytes) -> None:
        header = self._header
        assert header is not None, "write before any header"
        size = self._size(header)
        if len(self._data) + len(chunk) > size:
            # Refused before memory fills with bytes of no known place in the file.
            raise sent_too_much(self._what(header), size, self._stream_from, "load it again")
        self._data += chunk

    def progressed(self) -> None:
        """A load reports no progress."""

    def finish(self) -> T:
        assert self._header is not None, "finish before any header"
        data = bytes(self._data)
        # Let go before parsing: kept, the buffer was a third copy of the file at the peak.
        self._data = bytearray()
        return self._made(self._header, data)

    def abort(self, error: BaseException) -> BaseException:
        self._data = bytearray()
        return error


class ArraysSink(_MemorySink[dict[str, np.ndarray]]):
    """A downloaded dataset file parsed into its arrays: all their rows, or those of `rows` (a
    split of the very file: a header naming another is DataLoss)."""

    def __init__(self, rows: SplitRows | None = None) -> None:
        super().__init__()
        self._rows = rows

    def start(self, header: pb.DatasetVersion) -> None:
        if self._header is None and self._rows is not None:
            # The first stream's file is held to the one the indices are of, as a reconnect's is.
            self._header = self._rows.version
        super().start(header)

    def _made(self, header: pb.DatasetVersion, data: bytes) -> dict[str, np.ndarray]:
        arrays = parse_arrays(header, data)
        if self._rows is None:
            return arrays
        return {name: array[self._rows.indices] for name, array in arrays.items()}


class SplitIndicesSink(_MemorySink[SplitRows]):
    """A split's downloaded sample indices (little-endian int64), as many as the header's count."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self._split = split

    def _what(self, header: pb.DatasetVersion) -> str:
        return f"split {self._split!r} of {version_name(header)}"

    def _size(self, header: pb.DatasetVersion) -> int:
        counts = {s.name: s.count for s in header.splits}
        if self._split not in counts:
            raise DataLoss(
                f"the daemon sent the indices of split {self._split!r} of {version_name(header)}, "
                f"which it does not list among its splits ({', '.join(counts)}); load it again"
            )
        return 8 * counts[self._split]

    def _made(self, header: pb.DatasetVersion, data: bytes | bytearray) -> SplitRows:
        size = self._size(header)
        if len(data) != size:
            raise DataLoss(
                f"the daemon sent {len(data)} bytes of the indices of {self._what(header)}, not the "
                f"{size} of its {size // 8} samples; load it again"
            )
        return SplitRows(header, self._split, np.frombuffer(data, dtype="<i8"))

    def finish(self) -> SplitRows:
        assert self._header is not None, "finish before any header"
        # The buffer received becomes the indices, writable, as sent: no copy of 400 MB for 50M.
        data, self._data = self._data, bytearray()
        return self._made(self._header, data)


class Datasets(Part[C]):
    """`client.datasets`: push arrays or npz/npy files, list, inspect, download, delete.
    A dataset is named "name" (newest version) or "name:version"."""

    @call
    def push(
        self,
        /,
        name: str,
        path: str | Path | None = None,
        *,
        splits: Splits | None = None,
        seed: int = 0,
        array_name: str = "",
        allow_nonfinite: bool = False,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        arrays: Mapping[str, np.typing.ArrayLike] | None = None,
        **named_arrays: np.typing.ArrayLike,
    ) -> Upload[pb.DatasetVersion]:
        """Upload a new version: `push("clips", x=x, y=y, splits={"train": 0.8, "val": 0.2})` or
        `push("clips", "clips.npz")`. `arrays={"seed": s, "tags": t}` takes the arrays as a
        mapping instead of keywords, for names that are push's own parameters (`seed`, `name`,
        `path`, `tags`, ...); an array given as such a keyword is refused (TypeError), not taken
        for the parameter. Streamed in chunks; `progress(done, total)` after each.
        Identical content is stored once (the result has `deduplicated` set): a push that the
        newest version matches in bytes, splits, flags, description and tags adds no version and
        answers that one (`existing_version`); a new version of stored bytes names a version that
        holds them (`shared_with`). `array_name`: for a
        .npy file, the name its array gets (default x); an npz names its arrays itself, and the
        daemon refuses array_name with one (InvalidArgument)."""
        check_chunk_size(chunk_size)
        check_dataset_path(path)
        parameters = {
            "name": name,
            "path": path,
            "splits": splits,
            "seed": seed,
            "array_name": array_name,
            "allow_nonfinite": allow_nonfinite,
            "description": description,
            "tags": tags,
            "progress": progress,
            "chunk_size": chunk_size,
            "timeout": timeout,
        }
        pushed = pushed_arrays(parameters, arrays, named_arrays)

        def requests() -> Iterator[pb.UploadDatasetRequest]:
            return upload_requests(
                name,
                payload(path, pushed),
                splits=splits,
                seed=seed,
                array_name=array_name,
                allow_nonfinite=allow_nonfinite,
                description=description,
                tags=tags,
                chunk_size=chunk_size,
                progress=progress,
            )

        return Upload(S, "UploadDataset", requests, timeout_or(timeout, self._conn.transfer_timeout))

    @call
    def get(self, name: str, *, timeout: float | None = None) -> Op[pb.Dataset]:
        """A dataset's summary: latest version, version count, size."""
        return Op(S, "GetDataset", pb.GetDatasetRequest(name=name), timeout=timeout)

    @listing
    def list(
        self, prefix: str = "", page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.Dataset]:
        """Every dataset (optionally by name prefix), fetched page by page."""

        def page(token: str) -> Op[pb.ListDatasetsResponse]:
            request = pb.ListDatasetsRequest(name_prefix=prefix, page_size=page_size, page_token=token)
            return Op(S, "ListDatasets", request, timeout=timeout)

        return Pages(page, "datasets")

    @call
    def version(
        self, ref: str | common_pb2.DatasetRef, *, timeout: float | None = None
    ) -> Op[pb.DatasetVersion]:
        """One version ("name" for the newest, "name:3" for version 3): arrays, stats, splits."""
        return Op(S, "GetDatasetVersion", pb.GetDatasetVersionRequest(ref=dataset_ref(ref)), timeout=timeout)

    @listing
    def versions(
        self, name: str, page_size: int = 0, *, timeout: float | None = None
    ) -> Pages[pb.DatasetVersion]:
        """A dataset's versions, newest first."""

        def page(token: str) -> Op[pb.ListDatasetVersionsResponse]:
            request = pb.ListDatasetVersionsRequest(name=name, page_size=page_size, page_token=token)
            return Op(S, "ListDatasetVersions", request, timeout=timeout)

        return Pages(page, "versions")

    @call
    def delete(
        self, name: str, version: int = 0, force: bool = False, *, timeout: float | None = None
    ) -> Op[int]:
        """Delete one version ("name:3", or "name" with `version` 3) or, "name" alone with version
        0, the dataset with every version; returns how many went. FailedPrecondition while a
        queued or running job, a running sweep or a model version's lineage uses it, unless
        `force`. ValueError for "name:0" (no version: it would mean every one) and for a
        "name:version" that `version` contradicts."""
        ref = dataset_ref(name)
        if ":" in name:
            if not ref.version:
                raise ValueError(
                    f"{name} names no version (they start at 1); write {ref.name}:VERSION to delete one "
                    f"version, or {ref.name} alone to delete the dataset with every version"
                )
            if version and version != ref.version:
                raise ValueError(
                    f"{name} names version {ref.version} and version={version} another; give one of them"
                )
        request = pb.DeleteDatasetRequest(
            name=ref.name, version=version_number("version", version or ref.version), force=force
        )
        return Op(S, "DeleteDataset", request, lambda response: response.deleted_versions, timeout=timeout)

    @call
    def download(
        self,
        ref: str | common_pb2.DatasetRef,
        path: str | Path,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_BYTES,
        timeout: float | None = None,
        overwrite: bool = True,
        resume: bool = False,
    ) -> Call[pb.DatasetVersion]:
        """Write a version's stored file to `path`, verified against its sha256; it takes the
        name only once whole. A directory `path` (one that exists, or a str ending in "/", made
        where missing as the file is, and removed again where the download fails leaving it
        empty) gets the file named as the CLI names it, "NAME-vN.npz" (.npy for an npy file), of
        the version `ref` picks. `overwrite` False: a file at `path` is refused with FileExistsError.
        A stream that breaks (UNAVAILABLE: connection cut, daemon restarting) is made again
        within the client's RetryPolicy and goes on from the bytes written. One that gives up or
        times out keeps them in a hidden partial file beside `path` (one that ends any other way,
        stopped by the caller with KeyboardInterrupt, a cancelled task or its client closed, refused
        or on a full disk, removes them, unless asked to `resume`: it keeps them, those an earlier
        download kept with them, however it ends but in a file whose sha256 is not the version's,
        its error saying how many), with a
        record of the version and sha256 they are of; `resume` True goes on from them where the
        version asked for has that sha256 (ValueError where not, leaving them as they are), and
        without `resume` the download starts again from the first byte. A partial file there that
        is not this user's own, or is another name of a file too (a hard link), is refused with
        ValueError."""
        asked = dataset_ref(ref)

        def download_to(
            file: Path, pinned: common_pb2.DatasetRef, sink: type[ResumableDownloadSink[pb.DatasetVersion]]
        ) -> ResumingDownload[pb.DatasetVersion]:
            return ResumingDownload(
                S,
                "DownloadDataset",
                _pinned_request(pinned, chunk_size),
                Op(S, "GetDatasetVersion", pb.GetDatasetVersionRequest(ref=pinned), timeout=timeout),
                timeout_or(timeout, self._conn.transfer_timeout),
                lambda: sink(file, progress, overwrite, resume, version_name),
                self._conn.retry,
                f"downloading {asked.name}" + (f":{asked.version}" if asked.version else ""),
            )

        def into_directory(picked: pb.DatasetVersion) -> ResumingDownload[pb.DatasetVersion]:
            # The version named the file: its download is of that one, whatever is newer by then.
            pinned = common_pb2.DatasetRef(name=picked.name, version=picked.version)
            return download_to(Path(path) / default_file_name(picked), pinned, SinkInDirectory)

        def by_path() -> Call[pb.DatasetVersion]:
            if not is_download_directory(path):
                return download_to(Path(path), asked, ResumableDownloadSink)
            resolve: Op[pb.DatasetVersion] = Op(
                S, "GetDatasetVersion", pb.GetDatasetVersionRequest(ref=asked), timeout=timeout
            )
            return Chain(resolve, into_directory)

        return Decided(by_path)

    @call
    def load(
        self, ref: str | common_pb2.DatasetRef, timeout: float | None = None, *, split: str | None = None
    ) -> Call[dict[str, np.ndarray]]:
        """A version's arrays in memory, by name (downloaded, verified, parsed without pickle).
        `split` ("val"): only that split's rows, in the order of `split_indices` (ascending):
        the same set of samples a training job whose spec.data names this version and split
        trains or validates on (a job whose val_split is empty validates on "val" where the
        version has one), though a job reads its train split in a seeded order of its own each
        epoch. The whole file is downloaded, then the split's rows picked from it; `timeout`
        bounds both calls together. Name the version ("clips:3"): "clips" is the newest now,
        which a job given "clips" may not have had. InvalidArgument for a split the version
        lacks, listing its splits.
        A stream that breaks (UNAVAILABLE: connection cut, daemon restarting) is made again
        within the client's RetryPolicy and goes on from the bytes received, of the version the
        first stream sent; one that reconnects to another file is DataLoss."""
        asked = dataset_ref(ref)
        doing = f"loading {asked.name}" + (f":{asked.version}" if asked.version else "")
        seconds = timeout_or(timeout, self._conn.transfer_timeout)

        def arrays(
            pinned: common_pb2.DatasetRef, rows: SplitRows | None, seconds: float
        ) -> ResumingDownload[dict[str, np.ndarray]]:
            return ResumingDownload(
                S,
                "DownloadDataset",
                # chunk_size 0: the daemon's own.
                _pinned_request(pinned, 0),
                # Nothing outlives a load: no bytes of an earlier one to resolve the version of.
                None,
                seconds,
                lambda: ArraysSink(rows),
                self._conn.retry,
                doing,
            )

        if split is None:
            return arrays(asked, None, seconds)
        started = monotonic()

        def rows_of(rows: SplitRows) -> Call[dict[str, np.ndarray]]:
            # One timeout for the two calls: the file's download gets what the indices left.
            left = seconds - (monotonic() - started)
            if left <= 0:
                raise DeadlineExceeded(
                    f"{doing} ran past its timeout ({seconds:g} s) with the indices of split "
                    f"{split!r} received and none of the file; load it again with a longer timeout"
                )
            # The version the indices are of: "clips" may name a newer one by now.
            pinned = common_pb2.DatasetRef(name=rows.version.name, version=rows.version.version)
            return arrays(pinned, rows, left)

        return Chain(self._split_rows(asked, split, seconds), rows_of)

    @call
    def split_indices(
        self, ref: str | common_pb2.DatasetRef, split: str, *, timeout: float | None = None
    ) -> Call[np.ndarray]:
        """The sample indices (int64, ascending) of a version's split, as stored: the set of rows
        that a training job whose spec.data names this version and split trains or validates on
        (it reads its train split in a seeded order of its own each epoch), and those
        `load(ref, split=split)` gives, in this order. InvalidArgument for a split the version
        lacks, listing its splits."""
        rows = self._split_rows(dataset_ref(ref), split, timeout_or(timeout, self._conn.transfer_timeout))
        return Chain(rows, lambda got: Given(got.indices))

    def _split_rows(
        self, asked: common_pb2.DatasetRef, split: str, timeout: float
    ) -> ResumingDownload[SplitRows]:
        def request(header: pb.DatasetVersion | None, offset: int) -> pb.DownloadSplitIndicesRequest:
            pinned = (
                asked if header is None else common_pb2.DatasetRef(name=header.name, version=header.version)
            )
            return pb.DownloadSplitIndicesRequest(ref=pinned, split=split, offset=offset)

        return ResumingDownload(
            S,
            "DownloadSplitIndices",
            request,
            None,
            timeout,
            lambda: SplitIndicesSink(split),
            self._conn.retry,
            f"loading split {split!r} of {asked.name}" + (f":{asked.version}" if asked.version else ""),
        )


def _pinned_request(
    asked: common_pb2.DatasetRef, chunk_size: int
) -> Callable[[pb.DatasetVersion | None, int], pb.DownloadDatasetRequest]:
    """The request of a download's stream from `offset`: the first for what the caller `asked`,
    later ones for the version the first stream's header named ("clips" may name a newer one by
    then)."""

    def request(header: pb.DatasetVersion | None, offset: int) -> pb.DownloadDatasetRequest:
        pinned = asked if header is None else common_pb2.DatasetRef(name=header.name, version=header.version)
        return pb.DownloadDatasetRequest(ref=pinned, chunk_size=chunk_size, offset=offset)

    return request


def version_name(version: pb.DatasetVersion) -> str:
    return f"{version.name}:{version.version}"


def default_file_name(version: pb.DatasetVersion) -> str:
    """The file a download of `version` writes, given a directory (or, in the CLI, no name):
    "clips-v3.npz", or .npy for a version stored as one."""
    suffix = "npy" if version.format == pb.DATASET_FORMAT_NPY else "npz"
    return f"{version.name}-v{version.version}.{suffix}"


def parse_arrays(header: pb.DatasetVersion, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a downloaded dataset file; DataLoss when the bytes do not match the header."""
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise DataLoss(
            f"dataset {header.name}:{header.version} arrived corrupt (sha256 mismatch); load it again"
        )
    if header.format == pb.DATASET_FORMAT_NPY:
        name = header.arrays[0].name if header.arrays else "x"
        return {name: np.load(io.BytesIO(data), allow_pickle=False)}
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}

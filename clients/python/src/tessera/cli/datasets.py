"""`tessera datasets ...`. Each command takes (client, args, out) and prints its result."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from tessera.cli.arguments import UsageError, once_each, refused_resume_in_cli_words, replaced_only_with_force
from tessera.cli.output import Output, shape, size, transfer_progress, when
from tessera.client import Client
from tessera.datasets import default_file_name, stacking_recipe, write_npz
from tessera.errors import NotFound, TesseraError
from tessera.json_output import to_plain
from tessera.messages import counted, dataset_ref
from tessera.progress_line import byte_size
from tessera.tensors import dtype_name
from tessera.transfer import is_download_directory, partial_names
from tessera.v1 import datasets_pb2


def cmd_datasets_push(client: Client, args: argparse.Namespace, out: Output) -> None:
    splits = once_each(args.split, "--split")
    tags = once_each(args.tag, "--tag")
    if args.seed is not None and not splits:
        # Else ignored without a word: the seed only shuffles samples for fractions to cut.
        raise UsageError(
            "--seed seeds the random split that --split NAME=FRACTION asks for; without --split every "
            "sample is in one split, train"
        )
    arrays = joined_arrays(args.files, args.array)
    if len(args.files) > 1 and not args.as_is:
        refuse_per_sample_files(args.files, args.array)
    if args.array_name and (arrays or Path(args.files[0]).suffix.lower() != ".npy"):
        raise UsageError(
            f"--array-name names the array of a .npy file pushed alone; {' '.join(args.files)} is not one "
            "(an .npz names its arrays itself, joined .npy files by their stems or --array NAME=FILE)"
        )
    label = ", ".join(path.name for path in arrays.values()) if arrays else Path(args.files[0]).name
    with joined_npz(arrays) if arrays else nullcontext(Path(args.files[0])) as pushed:
        version = client.datasets.push(
            args.name,
            pushed,
            splits=splits or None,
            seed=args.seed or 0,
            array_name=args.array_name,
            allow_nonfinite=args.allow_nonfinite,
            description=args.description,
            tags=tags,
            progress=transfer_progress(out, f"pushing {label}"),
        )
    if out.as_json:
        return out.json(version)
    described = f"{counted(version.num_samples, 'sample')}, {byte_size(version.size_bytes)}"
    if version.existing_version:
        out.line(f"already stored as {version.name}:{version.version} (same bytes and splits): {described}")
    elif version.HasField("shared_with"):
        shared = f"{version.shared_with.name}:{version.shared_with.version}"
        out.line(f"stored {version.name}:{version.version} (bytes shared with {shared}): {described}")
    else:
        out.line(f"stored {version.name}:{version.version}: {described}")
    print_dataset_version(version, out)


def joined_arrays(files: list[str], named: list[tuple[str, str]]) -> dict[str, Path]:
    """The .npy files to join into one version, by array name (a file's stem, or the NAME of
    --array NAME=FILE); none where one file is pushed as it is."""
    if not files and not named:
        raise UsageError("name the file to push: FILE (.npz or .npy), x.npy y.npy, or --array NAME=FILE")
    if len(files) == 1 and not named:
        return {}
    arrays: dict[str, Path] = {}
    for name, path in [(Path(f).stem, f) for f in files] + named:
        if Path(path).suffix.lower() != ".npy":
            raise UsageError(
                f"{path}: several files join as .npy files, one array each; an .npz is pushed alone "
                "(or load it and save its arrays with the others: np.savez('d.npz', x=..., y=...))"
            )
        if name in arrays:
            raise UsageError(
                f"array {name!r} is given twice ({arrays[name]} and {path}); name one with --array NAME=FILE"
            )
        arrays[name] = Path(path)
    return arrays


def refuse_per_sample_files(files: list[str], named: list[tuple[str, str]]) -> None:
    """Refuses .npy files named by their stems that look like one sample (or a few) each rather
    than a job's arrays: a numbered series of three or more (clip_000, clip_001, ...), or files
    all of one shape with none named x or y (among them and the --array NAMEs), three or more or
    with fewer rows each than there are files. Joined as they are, each became an array of its
    own, and the job found no array x only at train time. Two files of many rows each (inputs,
    targets; feat1, feat2) are a job's arrays."""
    stems = [Path(f).stem for f in files]
    if {"x", "y"} & {*stems, *(name for name, _ in named)}:
        return
    shapes = {npy_array(f).shape for f in files}
    numbered = len(files) >= 3 and len({re.sub(r"\d+$", "", stem) for stem in stems}) == 1
    rows = min(s[0] if s else 0 for s in shapes)
    same_shape = len(shapes) == 1 and (len(files) >= 3 or rows < len(files))
    if not (numbered or same_shape):
        return
    leading_one = all(len(s) > 0 and s[0] == 1 for s in shapes)
    raise UsageError(
        f"{', '.join(stems)} look like one file per sample, not a job's arrays (x, y): joined, each "
        "would be an array of its own; "
        + stacking_recipe("concatenate" if leading_one else "stack")
        + "; --as-is stores them as arrays named by their stems all the same"
    )


def npy_array(path: str | Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped; a file numpy cannot read so (not a .npy file, or
    one of Python objects, which only unpickling reads) is a UsageError naming it."""
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        why = str(err)
    else:
        if isinstance(loaded, np.ndarray):
            return loaded
        loaded.close()
        why = "it is an .npz archive"
    raise UsageError(
        f"{path}: cannot be read as a .npy file of numbers ({why}); save one with "
        "numpy.save(FILE, array) from a numeric array"
    )


@contextmanager
def joined_npz(arrays: dict[str, Path]) -> Iterator[Path]:
    """The .npy files joined into an npz in the system's temporary folder, removed after: pushed
    from there, it streams as one .npz file does, where one built in memory held the data twice.
    Their sample counts are checked first, on the files' headers, as the daemon checks them."""
    loaded = {name: npy_array(path) for name, path in arrays.items()}
    for name, array in loaded.items():
        if array.ndim == 0:
            raise UsageError(
                f"{arrays[name]} holds a single value (shape ()); every array needs one row per sample"
            )
    if len({array.shape[0] for array in loaded.values()}) > 1:
        listed = ", ".join(f"{arrays[name]} has {array.shape[0]} samples" for name, array in loaded.items())
        raise UsageError(
            f"the files differ in their first (sample) dimension: {listed}; every array needs one row "
            "per sample"
        )
    with tempfile.TemporaryDirectory(prefix="tessera-push-") as folder:
        joined = Path(folder) / "joined.npz"
        write_npz(joined, loaded)
        yield joined


def cmd_datasets_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    datasets = list(client.datasets.list(prefix=args.prefix))
    if out.as_json:
        return out.json(datasets)
    if not datasets:
        if args.prefix:
            return out.line(f"no dataset's name starts with {args.prefix}")
        return out.line("no datasets yet; `tessera datasets push NAME FILE` uploads one")
    out.table(
        "datasets",
        ["name", "latest", "versions", "size", "updated"],
        [
            (d.name, d.latest_version, d.version_count, size(d.size_bytes), when(d.updated_at))
            for d in datasets
        ],
        whole=("name", "latest"),
    )


def cmd_datasets_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = client.datasets.version(args.ref)
    if out.as_json:
        return out.json(version)
    print_dataset_version(version, out)
    stored = "npy" if version.format == datasets_pb2.DATASET_FORMAT_NPY else "npz"
    out.line(f"file: {stored}, {byte_size(version.size_bytes)}")
    # On a line of its own: 64 digits that a narrow terminal would break where copied from.
    out.line(f"sha256: {version.sha256}")
    out.line(f"created: {when(version.created_at)} by {version.created_by}")


def cmd_datasets_versions(client: Client, args: argparse.Namespace, out: Output) -> None:
    versions = list(client.datasets.versions(args.name))
    if out.as_json:
        return out.json(versions)
    out.table(
        f"{args.name} versions",
        ["version", "samples", "arrays", "splits", "size", "created", "description"],
        [
            (
                v.version,
                v.num_samples,
                ", ".join(a.name for a in v.arrays),
                ", ".join(sp.name for sp in v.splits) or "-",
                size(v.size_bytes),
                when(v.created_at),
                v.description,
            )
            for v in versions
        ],
        whole=("version",),
        unbroken=("arrays", "splits"),
    )


def cmd_datasets_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    ref = dataset_ref(args.ref)
    try:
        # The SDK refuses "NAME:0", which the RPC would read as every version.
        deleted = client.datasets.delete(args.ref, force=args.force)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if out.as_json:
        shown = {"name": ref.name, "version": ref.version} if ref.version else {"name": ref.name}
        return out.json({**shown, "deleted_versions": deleted})
    if ref.version:
        return out.line(f"deleted {ref.name}:{ref.version}{_gone_with_it(client, ref.name)}")
    out.line(f"deleted dataset {ref.name} ({counted(deleted, 'version')})")


def _gone_with_it(client: Client, name: str) -> str:
    """What a version's delete says where it took the dataset with it (its last version): read
    after the delete, as nothing in DeleteDatasetResponse says so. The delete is done whatever
    this read meets (the daemon gone, UNAVAILABLE): then it says nothing more."""
    try:
        client.datasets.version(name)
    except NotFound:
        return f", its last version: dataset {name} is gone"
    except TesseraError:
        return ""
    return ""


def cmd_datasets_download(client: Client, args: argparse.Namespace, out: Output) -> None:
    # Resolved first: the default file name carries the version and the stored format.
    version = client.datasets.version(args.ref)
    default = default_file_name(version)
    # The SDK's rule, on the text as given: Path would drop the "/" that says "a directory".
    into_directory = bool(args.output) and is_download_directory(args.output)
    path = Path(args.output) / default if into_directory else Path(args.output or default)
    if args.resume and path.name == default:
        for note in kept_of_other_versions(path.parent, version.name, version.version):
            print(f"note: {note}", file=sys.stderr, flush=True)
    with replaced_only_with_force(), refused_resume_in_cli_words():
        version = client.datasets.download(
            f"{version.name}:{version.version}",
            args.output if into_directory else path,
            progress=None if out.as_json else transfer_progress(out, f"downloading {version.name}"),
            overwrite=args.force,
            resume=args.resume,
        )
    if out.as_json:
        return out.json({"path": str(path), "version": to_plain(version)})
    out.line(
        f"wrote {path}: {version.name}:{version.version}, {counted(version.num_samples, 'sample')}, "
        f"{byte_size(version.size_bytes)}, sha256 verified"
    )


def kept_of_other_versions(directory: Path, name: str, version: int) -> list[str]:
    """What a --resume to the default file name of `name`:`version` leaves alone in `directory`:
    partial downloads kept for the default file names of its other versions (after a newer
    version was pushed, `download NAME --resume` names another file), each with how to go on
    with it or remove it."""
    notes = []
    for record in sorted(directory.glob(".*.partial.json")):
        try:
            kept = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        match = (
            re.fullmatch(rf"{re.escape(name)}:(\d+)", str(kept.get("file")))
            if isinstance(kept, dict)
            else None
        )
        if match is None or int(match.group(1)) == version:
            continue
        for suffix in ("npz", "npy"):
            destination = directory / f"{name}-v{match.group(1)}.{suffix}"
            partial, its_record = partial_names(destination)
            if its_record == record and partial.exists():
                notes.append(
                    f"{partial} keeps a partial download of {name}:{match.group(1)}; "
                    f"`tessera datasets download {name}:{match.group(1)} -o {destination} --resume` goes on "
                    f"with it, `rm {partial} {record}` removes it"
                )
    return notes


def print_dataset_version(version: Any, out: Output) -> None:
    out.table(
        f"{version.name}:{version.version} ({counted(version.num_samples, 'sample')})",
        ["array", "dtype", "shape", "min", "max", "mean", "std"],
        [
            (
                a.name,
                dtype_name(a.dtype),
                shape(a.shape),
                f"{a.stats.min:.4g}",
                f"{a.stats.max:.4g}",
                f"{a.stats.mean:.4g}",
                f"{a.stats.std:.4g}",
            )
            for a in version.arrays
        ],
        whole=("array",),
    )
    nonfinite = [a for a in version.arrays if a.stats.nonfinite_count]
    if nonfinite:
        counts = ", ".join(f"{a.name} {a.stats.nonfinite_count}" for a in nonfinite)
        out.line(f"NaN or Inf (left out of the statistics): {counts}")
    if version.splits:
        out.line("splits: " + ", ".join(f"{s.name} {s.count}" for s in version.splits))
    if version.description:
        out.line(f"description: {version.description}")
    if version.tags:
        out.line("tags: " + ", ".join(f"{k}={v}" for k, v in sorted(version.tags.items())))

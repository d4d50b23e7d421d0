"""Input arrays read from a file or stdin, for predict, explain and an ensemble's --fit."""

from __future__ import annotations

import contextlib
import io
import sys
import zipfile
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

import numpy as np

from tessera.client import Client
from tessera.errors import InvalidArgument, TesseraError
from tessera.inference import refusing_version

T = TypeVar("T")

# The name a lone .npy file's array is sent under where the model has several inputs.
NPY_INPUT = "input"

# The first bytes of a .npy file and of a .npz (a zip archive).
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


@contextlib.contextmanager
def input_names_explained(path: str, inputs: Collection[str]) -> Iterator[None]:
    """The daemon's refusal of an array of `path` whose name is no input of the model, with how
    to name it: the daemon knows the model's inputs, not the file they came from."""
    try:
        yield
    except InvalidArgument as err:
        refused = [
            name for name in inputs if err.daemon_message.startswith(f"input {name!r} is not an input of ")
        ]
        if not refused:
            raise
        where = "standard input" if path == "-" else path
        raise type(err)(
            f"{err.daemon_message}. In {where}, rename the array {refused[0]!r} to the input it is for: "
            "numpy.savez(FILE, NAME=array) stores each array under its input's name (a .npy file "
            f"is sent to a model's sole input, and as {NPY_INPUT!r} to one of several)",
            err.trailers,
        ) from None


def sent_to_sole_input(
    client: Client,
    model: str,
    picked: int | str | None,
    inputs: dict[str, np.ndarray],
    send: Callable[[dict[str, np.ndarray], int | None], T],
) -> T:
    """`send(inputs, pinned)` (pinned: a version number to send to instead of the target, else
    None). A lone .npy file's array (NPY_INPUT) holds no name to match, and a model of one input
    leaves no doubt which it is for: it is sent under the name of the sole input of the versions
    the target may route to, looked up first, so that the daemon counts no refused request. Where
    that lookup cannot tell (no version known, versions of other inputs) or guessed wrong (the
    loaded versions are not those an alias points at) and the version the daemon routed to
    refuses the name sent as none of its inputs, it is sent again under that version's sole
    input to that version alone: a canary split or a moved alias may route a second call
    elsewhere."""
    if list(inputs) != [NPY_INPUT]:
        return send(inputs, None)
    array = inputs[NPY_INPUT]
    sent = sole_input_name(client, model, picked) or NPY_INPUT
    try:
        return send({sent: array}, None)
    except InvalidArgument as err:
        if not err.daemon_message.startswith(f"input {sent!r} is not an input of "):
            raise
        version = refusing_version(err) or (picked if isinstance(picked, int) else 0)
        if not version:
            raise
        named = sole_input_name(client, model, version)
        if named is None or named == sent:
            raise
        return send({named: array}, version)


def sole_input_name(client: Client, model: str, picked: int | str | None) -> str | None:
    """The name of the sole input of every version of `model` that `picked` (a number, an alias,
    None: the deployment) may route to, as the daemon's loaded versions list them (a serving
    replica has no registry), else as the registry's version says; None where they differ, one
    has several inputs, or none can be read."""
    try:
        loaded = [entry for entry in client.inference.loaded(model) if entry.HasField("signature")]
        if isinstance(picked, int):
            loaded = [entry for entry in loaded if entry.version == picked]
        signatures = [entry.signature for entry in loaded]
        if not signatures:
            signatures = [client.models.version(model, picked).signature]
    except TesseraError:
        return None
    names = {tuple(spec.name for spec in signature.inputs) for signature in signatures}
    if len(names) != 1:
        return None
    (only,) = names
    return only[0] if len(only) == 1 else None


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """Inputs from a .npz (each array by name) or a .npy (the input named "input"), told apart by
    their first bytes; "-" reads either from standard input. A file numpy cannot read is a
    ValueError naming it."""
    source: str | io.BytesIO = io.BytesIO(sys.stdin.buffer.read()) if path == "-" else path
    name = "<stdin>" if path == "-" else path
    try:
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {NPY_INPUT: loaded}
        with loaded as archive:
            return {array: archive[array] for array in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name}: {unreadable_arrays(source, err)}") from None


def unreadable_arrays(source: str | io.BytesIO, err: Exception) -> str:
    """Why numpy could not read `source`. For a file with neither format's header numpy offers
    to unpickle it, advice that does not apply to inputs, so the message says what is read."""
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[: len(NPY_MAGIC)]
    else:
        with open(source, "rb") as file:
            head = file.read(len(NPY_MAGIC))
    if not head.startswith((NPY_MAGIC, ZIP_MAGIC)):
        return (
            "not a .npz or .npy file; write one with numpy.savez(FILE, input=x) (an array per "
            "input name) or numpy.save(FILE, x)"
        )
    return f"cannot be read as numpy arrays: {err}"

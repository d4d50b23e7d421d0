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
    send: Callable[[dict[str, np.ndarray]], T],
) -> T:
    """`send(inputs)`; where a lone .npy file's array (NPY_INPUT) is refused as no input of the
    version that refused it and that version has exactly one input, sent again under its name:
    a file holds no name to match, and a model of one input leaves no doubt which it is for."""
    try:
        return send(inputs)
    except InvalidArgument as err:
        if list(inputs) != [NPY_INPUT] or not err.daemon_message.startswith(
            f"input {NPY_INPUT!r} is not an input of "
        ):
            raise
        try:
            signature = client.models.version(model, refusing_version(err) or picked).signature
        except TesseraError:
            raise err from None
        if len(signature.inputs) != 1:
            raise
        return send({signature.inputs[0].name: inputs[NPY_INPUT]})


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

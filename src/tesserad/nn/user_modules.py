"""The user's own nn.Module classes (the architecture family "python"), imported only from the
directories the operator lists in training.module_paths.

A client names a class ("mynet:Net"), never a file: the entry is a dotted module path and an
attribute, and the module is looked up under the listed directories alone, so a client cannot
make the daemon run code it sends. Whoever can write those directories runs code as the daemon.

The directories are a fact of the process, like sys.path: every builder of a model in it (the
training worker, the torch runtime, the ONNX export, the registry's weight check) must import
the same modules, so the composition root and the worker each register them once here.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("tesserad.nn")

SETTING = "training.module_paths"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRY_PATTERN = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}")
MAX_ENTRY_LENGTH = 256

_lock = threading.Lock()
_paths: list[Path] = []
_loaded_sha256: dict[str, str] = {}  # module name: the sha256 of the file it was imported from


def entry_problem(entry: object) -> str | None:
    """Why `entry` is not a "module:Class" name, or None when it is one."""
    if not isinstance(entry, str) or not entry:
        return f"must be a name such as mynet:Net (module:Class), got {entry!r}"
    if entry.partition(":")[0].endswith(".py"):
        return f"names a module, not its file: write {entry.replace('.py:', ':', 1)!r}"
    if len(entry) > MAX_ENTRY_LENGTH or not ENTRY_PATTERN.fullmatch(entry):
        return (
            f"must be module:Class, the module a dotted Python name found under {SETTING} "
            f"(mynet, models.vision) and no file path, got {entry[:MAX_ENTRY_LENGTH]!r}"
        )
    return None


def allow_module_paths(paths: tuple[Path, ...] | list[Path]) -> None:
    """Let this process import user modules from `paths` (kept with those allowed before)."""
    with _lock:
        for path in paths:
            resolved = Path(path).resolve()
            if resolved not in _paths:
                _paths.append(resolved)


def module_file(module: str, paths: tuple[Path, ...] | list[Path]) -> Path | None:
    """The file `module` ("a.b") is imported from under `paths` (a/b.py or a/b/__init__.py in the
    first directory holding it), found without importing anything; None if none holds it."""
    parts = module.split(".")
    for root in paths:
        base = Path(root).joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_entry_file(entry: str, paths: tuple[Path, ...] | list[Path]) -> Path:
    """The file of `entry`'s module under `paths`: FailedPrecondition when no directory is
    listed, NotFound when none holds the module. Messages name no server path."""
    if not paths:
        raise FailedPrecondition(
            f"architecture.python: this daemon imports no user modules; its operator lists the "
            f"directories they may come from in the setting {SETTING} (tesserad serve --module-path DIR)"
        )
    module = entry.partition(":")[0]
    found = module_file(module, paths)
    if found is None:
        raise NotFound(
            f"architecture.python.entry: module {module!r} is in none of the {len(paths)} "
            f"directories of {SETTING}; put {module.replace('.', '/')}.py in one of them"
        )
    return found


def load_class(entry: str, expected_sha256: str = "") -> type[Any]:
    """The nn.Module subclass `entry` names, imported from the allowed directories; a module
    whose file changed since it was imported here is imported again. A file whose sha256 is not
    `expected_sha256` (when given) logs a warning naming both: weights trained with the old code
    may not fit the new."""
    from torch import nn

    module_name, _, attribute = entry.partition(":")
    with _lock:
        paths = list(_paths)
        path = find_entry_file(entry, paths)
        sha256 = file_sha256(path)
        if expected_sha256 and sha256 != expected_sha256:
            log.warning(
                "architecture.python %s: its module's file changed since the job that trained these "
                "weights was submitted (sha256 %s then, %s now); the model is built from the file as it is now",
                entry,
                expected_sha256,
                sha256,
            )
        module = _import(module_name, path, sha256, paths)
    target = getattr(module, attribute, None)
    if target is None:
        raise InvalidArgument(
            f"architecture.python.entry: module {module_name!r} has no attribute {attribute!r}"
        )
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise InvalidArgument(
            f"architecture.python.entry: {entry} is {_kind(target)}, not a torch.nn.Module subclass"
        )
    return target


def _import(module_name: str, path: Path, sha256: str, paths: list[Path]) -> ModuleType:
    for root in paths:
        # Appended: a user module never shadows the standard library or an installed package.
        if str(root) not in sys.path:
            sys.path.append(str(root))
    module = sys.modules.get(module_name)
    if module is not None and _loaded_sha256.get(module_name) not in (None, sha256):
        module = importlib.reload(module)
    elif module is None:
        module = importlib.import_module(module_name)
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != path:
        raise FailedPrecondition(
            f"architecture.python.entry: module {module_name!r} is also the name of a module "
            f"installed with the daemon, which Python imports first; rename the file under {SETTING}"
        )
    _loaded_sha256[module_name] = sha256
    return module


def _kind(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if inspect.isfunction(value):
        return "a function"
    return f"a {type(value).__name__}"


def build_user_module(
    entry: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], output_size: int, sha256: str = ""
) -> Any:
    """`Class(**kwargs)`, given input_shape and output_size too when its __init__ has parameters so
    named (a TypeError of the class's own, for kwargs it refuses, is raised as it is)."""
    cls = load_class(entry, sha256)
    arguments = dict(kwargs)
    parameters = inspect.signature(cls.__init__).parameters
    if "input_shape" in parameters:
        arguments["input_shape"] = tuple(input_shape)
    if "output_size" in parameters:
        arguments["output_size"] = output_size
    return cls(**arguments)

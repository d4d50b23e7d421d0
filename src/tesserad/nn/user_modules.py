"""The user's own nn.Module classes (the architecture family "python"), imported only from the
directories the operator lists in training.module_paths.

A client names a class ("mynet:Net"), never a file: the entry is a dotted module path and an
attribute, and the module is looked up under the listed directories alone, so a client cannot
make the daemon run code it sends. Whoever can write those directories runs code as the daemon.

The directories are a fact of the process, like sys.path: every builder of a model in it (the
training worker, the torch runtime, the ONNX export, the registry's module hash) must find
the same modules, so the composition root and the worker each register them once here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import inspect
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from tesserad.errors import FailedPrecondition, InvalidArgument, NotFound, TesseraError

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
    # A package's __main__ is a script (it may exit the process); __init__ is its package's body.
    for part in entry.partition(":")[0].split("."):
        if part in ("__main__", "__init__"):
            return f"must be module:Class naming no {part} module (name the package or another module), got {entry!r}"
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
    first directory holding it), found without importing anything; None if none holds it.
    FailedPrecondition when the file, or a package directory or __init__.py on the way to it, is
    a symbolic link leading out of that directory: what an entry names stays under the listed
    directories, so a link to the standard library or any file is refused, not run."""
    parts = module.split(".")
    for listed in paths:
        root = Path(listed).resolve()
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                on_the_way = [root.joinpath(*parts[:i]) for i in range(1, len(parts))]
                on_the_way += [d / "__init__.py" for d in on_the_way if (d / "__init__.py").exists()]
                if not all(
                    p.resolve().is_relative_to(root) for p in [*on_the_way, candidate.parent, candidate]
                ):
                    raise FailedPrecondition(
                        f"architecture.python.entry: module {module!r} is a symbolic link leading out of "
                        f"the directory of {SETTING} that holds it (or lies under one); only files inside "
                        "those directories are imported: copy the module into one"
                    )
                return candidate.resolve()
    return None


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def allowed_file_sha256(entry: str) -> str:
    """The sha256 of `entry`'s module file under the directories this process imports from."""
    with _lock:
        paths = list(_paths)
    return file_sha256(find_entry_file(entry, paths))


def _from_roots(module: ModuleType, roots: list[Path]) -> bool:
    file = getattr(module, "__file__", None)
    spec = getattr(module, "__spec__", None)
    places = [file] if file else list(getattr(spec, "submodule_search_locations", None) or [])
    return bool(places) and all(any(Path(p).resolve().is_relative_to(r) for r in roots) for p in places)


def _imported_from_elsewhere(top: str, roots: list[Path]) -> bool:
    """Whether Python would import the top-level module `top` from somewhere other than `roots`
    (the standard library, an installed package), as it looks there first."""
    if top in sys.builtin_module_names or top in sys.stdlib_module_names:
        return True
    loaded = sys.modules.get(top)
    if loaded is not None:
        return not _from_roots(loaded, roots)
    elsewhere = [p for p in sys.path if not any(Path(p or ".").resolve() == r for r in roots)]
    spec = importlib.machinery.PathFinder.find_spec(top, elsewhere)
    # A spec without a loader is a namespace package's portion (a bare directory of that name):
    # Python imports a module or regular package found on any later path entry before it.
    return spec is not None and spec.loader is not None


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
    top = module.partition(".")[0]
    if _imported_from_elsewhere(top, [Path(p).resolve() for p in paths]):
        raise FailedPrecondition(_shadowed(top))
    return found


def _shadowed(module: str) -> str:
    return (
        f"architecture.python.entry: module {module!r} is also the name of a module Python imports "
        "first (from its standard library, an installed package or another directory on the "
        f"daemon's import path); rename the file under {SETTING}"
    )


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
        # A file written since the last import is one the finders' cached listings may not show.
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != path:
        raise FailedPrecondition(_shadowed(module_name))
    _loaded_sha256[module_name] = sha256
    return module


def _kind(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if inspect.isfunction(value):
        return "a function"
    return f"a {type(value).__name__}"


@contextmanager
def contain_user_code(what: str) -> Iterator[None]:
    """Run a block that may call a python family's module (its forward, hooks, state_dict or
    load_state_dict overrides): a SystemExit or KeyboardInterrupt it raises comes back as
    FailedPrecondition naming `what` ("the model's code"), never ending the process. Exceptions
    pass as they are: their callers already tell the client what they mean."""
    try:
        yield
    except Exception:
        raise
    except BaseException as exc:
        raise FailedPrecondition(f"{what} raised {type(exc).__name__}: {exc}") from None


def build_user_module(
    entry: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], output_size: int, sha256: str = ""
) -> Any:
    """`Class(**kwargs)`, given input_shape and output_size too when its __init__ has parameters so
    named. The module is user code run in this process: whatever it raises, SystemExit and
    KeyboardInterrupt too, comes back as FailedPrecondition (importing) or InvalidArgument
    (building) with its text, never ending the process."""
    try:
        cls = load_class(entry, sha256)
    except TesseraError:
        raise
    except BaseException as exc:
        raise FailedPrecondition(
            f"architecture.python.entry: importing {entry.partition(':')[0]!r} raised {_said(exc)}"
        ) from None
    arguments = dict(kwargs)
    parameters = inspect.signature(cls.__init__).parameters
    if "input_shape" in parameters:
        arguments["input_shape"] = tuple(input_shape)
    if "output_size" in parameters:
        arguments["output_size"] = output_size
    try:
        return cls(**arguments)
    except BaseException as exc:
        raise InvalidArgument(f"architecture.python: building {entry} raised {_said(exc)}") from None


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

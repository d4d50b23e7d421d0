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

import errno
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.abc import Loader
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import CodeType, ModuleType
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


# The loaders Python's path finder tries in a directory, in its order (a compiled extension module
# before the .py beside it): the lookup finds the file `import` would, and refuses what is not source.
_LOADERS: tuple[tuple[type[Loader], list[str]], ...] = (
    (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
    (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
)
_NOT_SOURCE: dict[type[Loader], str] = {
    importlib.machinery.ExtensionFileLoader: "a compiled extension module",
    importlib.machinery.SourcelessFileLoader: "compiled bytecode without its source",
}


class _SourceRun(importlib.machinery.SourceFileLoader):
    """Runs the source bytes read when the file was checked, never bytecode cached for it (a
    __pycache__ file is another file, which may lead anywhere), and writes none."""

    def __init__(self, fullname: str, path: str, source: bytes) -> None:
        super().__init__(fullname, path)
        self.source = source

    def get_code(self, fullname: str) -> CodeType:
        return self.source_to_code(self.source, self.path)


def _levels(module: str) -> list[str]:
    """The modules Python imports to import `module`, outermost first: a, a.b, a.b.c for a.b.c."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _find_spec(name: str, search: list[str]) -> ModuleSpec | None:
    """The spec Python's path finder gives `name` over the directories `search`, found as it finds
    it: the first directory holding a module or regular package of that name (a package before a
    module beside it), else a namespace package of every bare directory of that name. Not through
    importlib.machinery.PathFinder: a nested namespace package's spec from it needs its parent in
    sys.modules (nothing is imported at submit), and a top-level one's path follows sys.path."""
    portions: list[str] = []
    for directory in search:
        spec = importlib.machinery.FileFinder(directory, *_LOADERS).find_spec(name)
        if spec is None:
            continue
        if spec.loader is not None:
            return spec
        portions += spec.submodule_search_locations or []
    if not portions:
        return None
    namespace = importlib.machinery.ModuleSpec(name, None, is_package=True)
    namespace.submodule_search_locations = portions
    return namespace


def _checked_spec(name: str, search: list[str], roots: list[Path], module: str) -> ModuleSpec:
    """The spec of `name`, one level of the entry's `module`, over `search` (the listed directories,
    or its package's __path__): NotFound when nothing there holds it (or only bare directories of
    the module's own name), FailedPrecondition when it is not Python source, or when its file or
    package directory resolves outside `roots` (a symbolic link leading out)."""
    spec = _find_spec(name, search)
    if spec is None or (spec.loader is None and name == module):
        raise NotFound(_not_found(module, name, search, roots))
    if spec.loader is not None and type(spec.loader) is not importlib.machinery.SourceFileLoader:
        shown = _shown(spec.origin or name, roots)
        raise FailedPrecondition(
            f"architecture.python.entry: module {name!r} would be imported from {shown!r}, "
            f"{_NOT_SOURCE.get(type(spec.loader), 'not a Python source file')}; only Python source "
            f"(.py files) under {SETTING} is imported: move {shown!r} out of that directory"
        )
    places = [spec.origin] if spec.loader is not None and spec.origin else []
    for place in [*places, *(spec.submodule_search_locations or [])]:
        if not _inside(place, roots):
            raise FailedPrecondition(_leads_out(place, name, roots))
    return spec


def _inside(place: str, roots: list[Path]) -> bool:
    return any(Path(place).resolve().is_relative_to(root) for root in roots)


def _leads_out(place: str, name: str, roots: list[Path]) -> str:
    return (
        f"architecture.python.entry: {_shown(place, roots)!r} (module {name!r}) is a symbolic link "
        f"leading out of the directories of {SETTING} (or lies in one); only files inside "
        "those directories are imported: copy it into one"
    )


def _checked_level(name: str, search: list[str], roots: list[Path], module: str) -> tuple[ModuleSpec, str]:
    """`name`'s spec as _checked_spec gives it, its module's source read once from the file as
    opened, and set to be run from those bytes; with their sha256 ("" for a namespace package).
    The file is opened without following a link and its opened place checked again: a file
    swapped after the check for a link leading out is refused, never read."""
    spec = _checked_spec(name, search, roots, module)
    if spec.loader is None or spec.origin is None:
        return spec, ""
    try:
        # Resolved first, so a module file that is a link staying inside the directories is
        # imported; O_NOFOLLOW refuses a last component swapped for a link after resolve().
        fd = os.open(Path(spec.origin).resolve(), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FailedPrecondition(_leads_out(spec.origin, name, roots)) from None
        raise
    with os.fdopen(fd, "rb") as file:
        if not _opened_inside(fd, spec.origin, roots):
            raise FailedPrecondition(_leads_out(spec.origin, name, roots))
        source = file.read()
    spec.loader = _SourceRun(name, spec.origin, source)
    return spec, hashlib.sha256(source).hexdigest()


def _opened_inside(fd: int, origin: str, roots: list[Path]) -> bool:
    """Whether the file open as `fd` lies inside `roots`. Where /proc gives the kernel's name of
    the file opened, by that name: it has no links in it, so it is compared as it is (resolving
    it again would follow a link put in its way since). Where there is no /proc (macOS, BSD,
    sandboxes), by identity: the file `origin` resolves to now lies inside and is the one open."""
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        resolved = Path(origin).resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            return False
        try:
            there = os.stat(resolved)
        except OSError:  # gone since it was opened: not the file checked
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
    return any(opened.is_relative_to(root) for root in roots)


def _not_found(module: str, name: str, search: list[str], roots: list[Path]) -> str:
    if "." not in name:
        return (
            f"architecture.python.entry: module {module!r} is in none of the {len(roots)} "
            f"directories of {SETTING}; put {module.replace('.', '/')}.py in one of them"
        )
    parent, _, tail = name.rpartition(".")
    missing = f"{tail}.py" if name == module else f"{tail}/"
    if not search:
        return (
            f"architecture.python.entry: module {module!r} is not found: {parent!r} is a module, "
            f"not a package; name a class of {parent!r} ({parent}:Net), or make it a package "
            f"({parent.replace('.', '/')}/__init__.py) holding {missing}"
        )
    # A namespace package's directories of one name under several listed ones are named once.
    where = ", ".join(repr(shown) for shown in dict.fromkeys(_shown(place, roots) for place in search))
    return (
        f"architecture.python.entry: module {module!r} is not found: its package {parent!r} is "
        f"imported from {where}, which holds no {missing}; put it there"
    )


def _shown(place: str, roots: list[Path]) -> str:
    """`place` as named under the listed directory it lies in, links not followed: a message
    names no server path."""
    path = Path(os.path.abspath(place))
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


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
    return bool(places) and all(_inside(p, roots) for p in places)


def _spec_from_roots(spec: ModuleSpec, roots: list[Path]) -> bool:
    places = (
        [spec.origin] if spec.has_location and spec.origin else list(spec.submodule_search_locations or [])
    )
    return bool(places) and all(_inside(p, roots) for p in places)


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
    if spec is not None and spec.loader is not None:
        return True
    # An editable install's or a custom importer's finder: it imports its names from its own
    # places, wherever it sits in sys.meta_path (one after the path finder has its names taken
    # over once the listed directories are on sys.path).
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            continue
        try:
            spec = finder.find_spec(top, None)
        except Exception:  # a finder that fails on the name imports nothing from elsewhere
            continue
        if spec is not None and not _spec_from_roots(spec, roots):
            return True
    return False


def find_entry_file(entry: str, paths: tuple[Path, ...] | list[Path]) -> Path:
    """The file of `entry`'s module under `paths`, the one Python would import from them, found
    without importing anything: FailedPrecondition when no directory is listed, or when a file or
    package directory on the way is no Python source or leads out of them; NotFound when none
    holds the module. Messages name no server path."""
    if not paths:
        raise FailedPrecondition(_NO_PATHS)
    module = entry.partition(":")[0]
    roots = [Path(p).resolve() for p in paths]
    search = [str(root) for root in roots]
    for name in _levels(module):
        spec = _checked_spec(name, search, roots, module)
        search = list(spec.submodule_search_locations or [])
    top = module.partition(".")[0]
    if _imported_from_elsewhere(top, roots):
        raise FailedPrecondition(_shadowed(top))
    assert spec.origin is not None  # a module's spec, not a namespace package's: _checked_spec
    return Path(spec.origin).resolve()


_NO_PATHS = (
    "architecture.python: this daemon imports no user modules; its operator lists the "
    f"directories they may come from in the setting {SETTING} (tesserad serve --module-path DIR)"
)


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
        if not _paths:
            raise FailedPrecondition(_NO_PATHS)
        module, sha256 = _import(module_name, list(_paths))
    if expected_sha256 and sha256 != expected_sha256:
        log.warning(
            "architecture.python %s: its module's file changed since the job that trained these "
            "weights was submitted (sha256 %s then, %s now); the model is built from the file as it is now",
            entry,
            expected_sha256,
            sha256,
        )
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


class _CheckedLevels(importlib.abc.MetaPathFinder):
    """First in sys.meta_path once an entry was imported: while one is, a level of it that a
    package on the way imports itself (`from .net import Net` in its __init__.py) is found, checked
    and run as _import runs it, once, never by Python's path finder from a cached .pyc. It stays
    there: taking it out while another thread's import walks sys.meta_path would skip a finder."""

    def __init__(self) -> None:
        self.levels: list[str] = []
        self.roots: list[Path] = []
        self.module = ""
        self.served: dict[str, tuple[ModuleSpec, str]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.levels or path is None:
            return None
        spec, sha256 = _checked_level(fullname, list(path), self.roots, self.module)
        self.served[fullname] = (spec, sha256)
        return spec


_finder = _CheckedLevels()


def _import(module_name: str, roots: list[Path]) -> tuple[ModuleType, str]:
    """`module_name` imported level by level from specs checked as find_entry_file checks them
    (each over `roots`, or its package's __path__ as Python searches it), so the file checked is
    the file run; with the sha256 of the entry module's source run. A module already imported
    here from the same place is kept, the entry's own module only while its file is unchanged.
    As in Python's import, a level that fails leaves sys.modules again (what it replaced comes
    back) and the levels above it, whose code ran, stay."""
    for root in roots:
        # Appended: the module's imports of its neighbours find them, and never shadow the
        # standard library or an installed package.
        if str(root) not in sys.path:
            sys.path.append(str(root))
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    levels = _levels(module_name)
    _finder.levels, _finder.roots, _finder.module, _finder.served = levels[1:], roots, module_name, {}
    try:
        search = [str(root) for root in roots]
        parent: ModuleType | None = None
        sha256 = ""
        for name in levels:
            loaded = sys.modules.get(name)
            served = _finder.served.get(name)
            if served is not None and loaded is not None and loaded.__spec__ is served[0]:
                # Imported through the finder by a package above while this load ran.
                module, sha256 = loaded, served[1]
                _loaded_sha256[name] = sha256
            else:
                spec, sha256 = _checked_level(name, search, roots, module_name)
                if parent is None and _imported_from_elsewhere(name, roots):
                    raise FailedPrecondition(_shadowed(name))
                if (
                    loaded is not None
                    and _same_place(loaded, spec)
                    and (name != module_name or _loaded_sha256.get(name) == sha256)
                ):
                    module = loaded
                else:
                    module = _run(name, spec, sha256, loaded)
            if parent is not None:
                setattr(parent, name.rpartition(".")[2], module)
            parent = module
            search = list(getattr(module, "__path__", None) or [])
    finally:
        _finder.levels, _finder.served = [], {}
    return module, sha256


def _run(name: str, spec: ModuleSpec, sha256: str, loaded: ModuleType | None) -> ModuleType:
    """A new module of `spec` in sys.modules in place of `loaded`, its code run; `loaded` back
    there when it fails."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if spec.submodule_search_locations is not None:
        # A package made again: its submodules stay imported (Python imports them from
        # sys.modules, not again), so they stay its attributes as well.
        prefix = f"{name}."
        for held, submodule in list(sys.modules.items()):
            if held.startswith(prefix) and "." not in held[len(prefix) :]:
                setattr(module, held[len(prefix) :], submodule)
    try:
        # The module's imports of neighbours written since the last import: the path
        # finders' cached listings of the directories may not show them yet.
        importlib.invalidate_caches()
        if isinstance(spec.loader, _SourceRun):
            spec.loader.exec_module(module)
    except BaseException:
        if loaded is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = loaded
        raise
    _loaded_sha256[name] = sha256
    return module


def _same_place(module: ModuleType, spec: ModuleSpec) -> bool:
    held = getattr(module, "__spec__", None)
    return (
        held is not None
        and held.origin == spec.origin
        and list(getattr(module, "__path__", None) or []) == list(spec.submodule_search_locations or [])
    )


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

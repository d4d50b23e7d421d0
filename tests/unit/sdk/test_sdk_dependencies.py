"""`pip install clients/python` pulls no torch: the SDK's whole dependency closure, read from the
installed distributions' metadata (what pip resolved), holds none of the daemon's heavy parts."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _closure(root: str) -> set[str]:
    seen: set[str] = set()
    pending = [root]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            # Extras the SDK does not ask for, and other platforms' wheels, are not installed.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def test_the_sdk_dependency_closure_has_no_torch() -> None:
    closure = _closure("tessera-client")
    assert {"grpcio", "protobuf", "numpy"} <= closure
    assert not closure & {"torch", "tesserad", "onnxruntime", "onnx", "lmdb"}, sorted(closure)

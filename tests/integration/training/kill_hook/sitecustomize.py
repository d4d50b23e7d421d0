"""Kill points for crash tests: a daemon started with this directory first on PYTHONPATH and
TESSERA_TEST_KILL_AT set SIGKILLs itself at that point of a training job's end.

- "final_checkpoint": once the job's final checkpoint is stored (its end is not yet).
- "registered": once the registry has committed the job's version (the job's record and end
  are not yet written).

Python imports `sitecustomize` at start-up; the hook patches the daemon's modules as they are
first imported, so the daemon starts as it always does. The variable is removed from the
environment here, so the workers the daemon starts leave their code alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
from types import ModuleType
from typing import Any

_AT = os.environ.pop("TESSERA_TEST_KILL_AT", "")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_jobs(module: ModuleType) -> None:
    on_checkpoint = module.Jobs._on_checkpoint

    def killing_on_checkpoint(self: Any, job: Any, message: Any) -> Any:
        job = on_checkpoint(self, job, message)
        if message.info.reason == "final":
            _die()
        return job

    module.Jobs._on_checkpoint = killing_on_checkpoint


def _patch_registration(module: ModuleType) -> None:
    register = module.JobRegistration.register

    def killing_register(self: Any, job: Any, weights: Any) -> Any:
        register(self, job, weights)
        _die()

    module.JobRegistration.register = killing_register


_PATCHES = {
    "final_checkpoint": ("tesserad.training.jobs", _patch_jobs),
    "registered": ("tesserad.training.registration", _patch_registration),
}


class _PatchAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, name: str, patch: Any) -> None:
        self._name, self._patch = name, patch
        self._loader: importlib.abc.Loader | None = None

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self._loader is not None
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self._loader is not None
        self._loader.exec_module(module)
        self._patch(module)


if _AT:
    sys.meta_path.insert(0, _PatchAfterImport(*_PATCHES[_AT]))

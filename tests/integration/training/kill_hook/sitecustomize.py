"""Kill points for crash tests: a daemon started with this directory first on PYTHONPATH and
TESSERA_TEST_KILL_AT set stops at that point of a training job's end.

- "final_checkpoint": the daemon SIGKILLs itself once the job's final checkpoint is stored (its
  end is not yet).
- "registered": the daemon SIGKILLs itself once the registry has committed the job's version
  (the job's record and end are not yet written).
- "stop_after_final_checkpoint": once the job's final checkpoint is stored, the daemon sends
  itself SIGTERM and holds the job's supervisor until the shutdown has begun: a graceful stop
  that catches the job after its training finished.
- "worker_final_checkpoint": the job's worker process SIGKILLs itself once it has sent its final
  checkpoint (before its outcome); the daemon goes on.
- "hold_sweep_at_trial_end": the daemon holds the first sweep trial's end between the job's end
  and its sweep taking it: it logs "test hold: a trial ended", then logs "test hold: sweep read"
  at each GetSweep that comes meanwhile (before answering it), and goes on once the file named by
  TESSERA_TEST_HOLD_RELEASE exists.
- "pruned_saved": the daemon SIGKILLs itself once a sweep trial's prune is stored in its row
  (its run not yet tagged, its job not yet cancelled).

Python imports `sitecustomize` at start-up; the hook patches the modules as they are first
imported, so the daemon starts as it always does. For a daemon's kill point the variable is
removed from the environment here, so the workers the daemon starts leave their code alone; for
a worker's it stays, for the worker processes (and the fork server that starts them) to read.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

_WORKER_POINTS = {"worker_final_checkpoint"}
_AT = os.environ.get("TESSERA_TEST_KILL_AT", "")
if _AT not in _WORKER_POINTS:
    os.environ.pop("TESSERA_TEST_KILL_AT", None)


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


def _patch_jobs_stop(module: ModuleType) -> None:
    on_checkpoint = module.Jobs._on_checkpoint

    def stopping_on_checkpoint(self: Any, job: Any, message: Any) -> Any:
        job = on_checkpoint(self, job, message)
        if message.info.reason == "final":
            os.kill(os.getpid(), signal.SIGTERM)
            # The job's end must not be stored before the shutdown stops its worker.
            deadline = time.monotonic() + 60
            while not self._closing and time.monotonic() < deadline:
                time.sleep(0.01)
        return job

    module.Jobs._on_checkpoint = stopping_on_checkpoint


def _patch_sweeps_hold(module: ModuleType) -> None:
    on_job, get = module.Sweeps._on_job, module.Sweeps.get
    release = Path(os.environ["TESSERA_TEST_HOLD_RELEASE"])
    holding: list[bool] = []  # once: [True] while the hold lasts, [False] after

    def holding_on_job(self: Any, job: Any, kind: str, data: Any) -> None:
        if kind == "ended" and job.sweep_id and not holding:
            holding.append(True)
            module.log.warning("test hold: a trial ended")
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            holding[0] = False
        on_job(self, job, kind, data)

    def said_get(self: Any, sweep_id: str) -> Any:
        if holding and holding[0]:
            module.log.warning("test hold: sweep read")
        return get(self, sweep_id)

    module.Sweeps._on_job = holding_on_job
    module.Sweeps.get = said_get


def _patch_sweeps_prune(module: ModuleType) -> None:
    def killing_prune(self: Any, job_id: str, epoch: int) -> None:
        _die()

    module.Sweeps._prune = killing_prune


def _patch_registration(module: ModuleType) -> None:
    register = module.JobRegistration.register

    def killing_register(self: Any, job: Any, weights: Any) -> Any:
        register(self, job, weights)
        _die()

    module.JobRegistration.register = killing_register


def _patch_trainer(module: ModuleType) -> None:
    maybe_checkpoint = module.Trainer._maybe_checkpoint

    def killing_maybe_checkpoint(
        self: Any, epoch: int, step: int, metrics: dict[str, float], final: bool
    ) -> None:
        maybe_checkpoint(self, epoch, step, metrics, final)
        # Sent in full: what is in the pipe outlives the process that wrote it.
        if final and self.dist.leader:
            _die()

    module.Trainer._maybe_checkpoint = killing_maybe_checkpoint


_PATCHES = {
    "final_checkpoint": ("tesserad.training.jobs", _patch_jobs),
    "registered": ("tesserad.training.registration", _patch_registration),
    "stop_after_final_checkpoint": ("tesserad.training.jobs", _patch_jobs_stop),
    "worker_final_checkpoint": ("tesserad.training.loop", _patch_trainer),
    "hold_sweep_at_trial_end": ("tesserad.training.sweeps", _patch_sweeps_hold),
    "pruned_saved": ("tesserad.training.sweeps", _patch_sweeps_prune),
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

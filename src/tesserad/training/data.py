"""The jobs' view of the Datasets domain: facts for submit-time checks, file and indices for workers."""

from __future__ import annotations

from typing import Any

from tesserad.datasets import Datasets, DatasetVersionRecord, all_whole, check_npz_directory
from tesserad.errors import FailedPrecondition, InvalidArgument
from tesserad.store import WriteTxn
from tesserad.training.jobs import WorkerData
from tesserad.training.spec import DatasetFacts
from tesserad.training.worker import DataSource

# Above this size an array is not read for the hint that its floats could be cast to integers.
WHOLE_HINT_MAX_BYTES = 64 << 20


class DatasetAccess:
    def __init__(self, datasets: Datasets) -> None:
        self._datasets = datasets

    def facts(self, name: str, version: int) -> DatasetFacts:
        record = self._datasets.resolve(name, version or None)
        return DatasetFacts(
            name=record.name,
            version=record.version,
            sha256=record.sha256,
            arrays={a.name: (a.dtype, tuple(a.shape)) for a in record.arrays},
            splits={s.name: s.count for s in record.splits},
            ranges={a.name: (a.stats.min, a.stats.max) for a in record.arrays},
            whole=lambda array: self._all_whole(record, array),
        )

    def _all_whole(self, record: DatasetVersionRecord, array: str) -> bool:
        """Whether every finite value of `array` is whole, for a refusal's hint alone: any
        failure to read it gives no hint rather than replacing the refusal."""
        try:
            path = self._datasets.path(record)
            return all_whole(path, record.format, record.array_name or "x", array, WHOLE_HINT_MAX_BYTES)
        except Exception:
            return False

    def hold(self, txn: WriteTxn, data: dict[str, Any], holder: str) -> str:
        """Hold the version `data` names (NotFound if it is gone); its sha256."""
        return self._datasets.hold(txn, data["dataset"], data["version"], holder).sha256

    def worker_data(self, data: dict[str, Any]) -> WorkerData:
        """The verified dataset file and the split indices, resolved by the daemon for a worker: the
        file is held to the checks an upload's file passes before zipfile reads it, as a worker's
        open of an npz parses its whole directory."""
        record: DatasetVersionRecord = self._datasets.resolve(data["dataset"], data["version"])
        path = self._datasets.path(record)
        try:
            check_npz_directory(path, record.format)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"dataset {record.name!r} v{record.version}'s stored file fails a check every upload "
                f"passes now: {exc.message}. A tesserad older than that check stored it (a store "
                "restored from its backup), or it was damaged: upload the data again and submit the "
                "job on that version"
            ) from None
        source = DataSource(
            path=str(path),
            format=record.format,
            array_name=record.array_name or "x",
            input_array=data["input_array"],
            target_array=data["target_array"],
        )
        train = self._datasets.split_indices(record, data["train_split"])
        val = self._datasets.split_indices(record, data["val_split"]) if data["val_split"] else None
        return WorkerData(source, train, val)

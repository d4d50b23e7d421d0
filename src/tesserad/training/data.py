"""The jobs' view of the Datasets domain: facts for submit-time checks, file and indices for workers."""

from __future__ import annotations

from typing import Any

from tesserad.datasets import Datasets, DatasetVersionRecord
from tesserad.store import WriteTxn
from tesserad.training.jobs import WorkerData
from tesserad.training.spec import DatasetFacts
from tesserad.training.worker import DataSource


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
        )

    def hold(self, txn: WriteTxn, data: dict[str, Any], holder: str) -> str:
        """Hold the version `data` names (NotFound if it is gone); its sha256."""
        return self._datasets.hold(txn, data["dataset"], data["version"], holder).sha256

    def worker_data(self, data: dict[str, Any]) -> WorkerData:
        """The verified dataset file and the split indices, resolved by the daemon for a worker."""
        record: DatasetVersionRecord = self._datasets.resolve(data["dataset"], data["version"])
        source = DataSource(
            path=str(self._datasets.path(record)),
            format=record.format,
            array_name=record.array_name or "x",
            input_array=data["input_array"],
            target_array=data["target_array"],
        )
        train = self._datasets.split_indices(record, data["train_split"])
        val = self._datasets.split_indices(record, data["val_split"]) if data["val_split"] else None
        return WorkerData(source, train, val)

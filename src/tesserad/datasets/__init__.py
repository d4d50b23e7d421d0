"""Datasets domain: named arrays (npy/npz) stored once per content, versioned, split (no gRPC here).

`Datasets` is the entry point (see tesserad.datasets.service for its guarantees);
`open_arrays(path, format, array_name)` opens a dataset file from its path alone, for
training worker processes, once `check_npz_directory` passed it.
"""

from tesserad.datasets.arrays import ArrayInfo, ArrayStats, all_whole, check_npz_directory, open_arrays
from tesserad.datasets.references import TABLES as REFERENCE_TABLES
from tesserad.datasets.service import (
    MARKERS,
    TABLES,
    DatasetRecord,
    Datasets,
    DatasetVersionRecord,
    SplitInfo,
    UploadSpec,
)
from tesserad.datasets.splits import DEFAULT_SPLIT, FractionSplit, IndexSplit, SplitSpec
from tesserad.datasets.usage import TABLES as USAGE_TABLES
from tesserad.paging import Page

__all__ = [
    "DEFAULT_SPLIT",
    "MARKERS",
    "REFERENCE_TABLES",
    "TABLES",
    "USAGE_TABLES",
    "ArrayInfo",
    "ArrayStats",
    "DatasetRecord",
    "DatasetVersionRecord",
    "Datasets",
    "FractionSplit",
    "IndexSplit",
    "Page",
    "SplitInfo",
    "SplitSpec",
    "UploadSpec",
    "all_whole",
    "check_npz_directory",
    "open_arrays",
]

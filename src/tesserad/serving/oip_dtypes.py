"""The Open Inference Protocol's datatype names and their numpy dtypes: a module of its own, so
that a JSON parser process (tesserad.api.oip_json_tensors) imports no more than them."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# The protocol's datatype names.
OIP_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "UINT16": np.dtype(np.uint16),
    "INT16": np.dtype(np.int16),
    "UINT32": np.dtype(np.uint32),
    "INT32": np.dtype(np.int32),
    "UINT64": np.dtype(np.uint64),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
OIP_NAME_BY_DTYPE: dict[np.dtype, str] = {dtype: name for name, dtype in OIP_DTYPES.items()}

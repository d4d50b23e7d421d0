"""`message_toml`: a spec as TOML that reads back, through from_dict, to the same message."""

from __future__ import annotations

import tomllib

from tessera.messages import from_dict
from tessera.toml_text import message_toml
from tessera.v1 import job_spec_pb2


def test_a_spec_as_toml_reads_back_to_the_same_message() -> None:
    spec = job_spec_pb2.JobSpec(experiment="e", task=job_spec_pb2.TASK_REGRESSION, epochs=0, seed=7)
    spec.optimizer.lr = 3e-4
    spec.lr_schedule.constant.SetInParent()
    spec.early_stopping.mode = job_spec_pb2.OPTIMIZE_MODE_MAX
    spec.data.dataset.name = "table"
    spec.freeze.extend(["features.*"])
    spec.architecture.input_shape.extend([4])
    spec.architecture.mlp.hidden_sizes.extend([8, 4])
    spec.tags.update({"team": "vision", "odd key\x7f": 'a "quoted"\nvalue \x01 é 😀'})
    text = message_toml(spec)
    assert 'task = "regression"' in text and "epochs = 0" in text and "[lr_schedule.constant]" in text
    assert from_dict(job_spec_pb2.JobSpec, tomllib.loads(text)) == spec

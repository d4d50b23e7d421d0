"""The fine-tuning keys of a TOML spec (init_from, freeze, replace_head, backbone_lr_scale) become
the JobSpec's fields, and their mistakes are named by file and line like any other key's."""

from __future__ import annotations

import pytest

from tessera.messages import from_dict, load_toml
from tessera.v1 import common_pb2, job_spec_pb2

FINE_TUNE = """\
init_from = { model = "clips-cnn4d", alias = "staging" }
freeze = ["features.*"]
replace_head = { output_size = 3 }
backbone_lr_scale = 0.1

[data]
dataset = "clips"
"""

MISTAKES = """\
init_from = { model = "clips-cnn4d", version = 1, alias = "staging" }
freeze = "features.*"
replace_head = { outputs = 3 }
backbone_lr_scale = "low"
"""


def test_fine_tuning_keys_parse_into_the_job_spec(tmp_path):
    path = tmp_path / "finetune.toml"
    path.write_text(FINE_TUNE)
    spec = from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert spec.init_from == common_pb2.VersionRef(model="clips-cnn4d", alias="staging")
    assert list(spec.freeze) == ["features.*"]
    assert spec.replace_head.output_size == 3
    assert spec.backbone_lr_scale == 0.1
    assert not spec.HasField("architecture")  # left to the parent's


def test_fine_tuning_mistakes_are_named_with_their_lines(tmp_path):
    path = tmp_path / "finetune.toml"
    path.write_text(MISTAKES)
    with pytest.raises(ValueError, match=r"finetune.toml has 4 problems:\n") as caught:
        from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert [line.strip() for line in str(caught.value).splitlines()[1:]] == [
        f"{path}:1: init_from.alias: version is set too; set only one of version, alias",
        f'{path}:2: freeze: expected a list, got "features.*"',
        f"{path}:3: replace_head.outputs: unknown key; did you mean output_size?",
        f'{path}:4: backbone_lr_scale: expected a number, got "low"',
    ]

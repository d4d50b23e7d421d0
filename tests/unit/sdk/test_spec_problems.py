"""A spec with mistakes names every one of them at once, by the TOML's own dotted names, with
the file's line when it came from a file and the nearest known name for a near miss."""

from __future__ import annotations

import tomllib

import pytest
from google.protobuf import json_format

from tessera.messages import dotted_name, from_dict, load_toml
from tessera.toml_lines import key_lines
from tessera.v1 import architecture_pb2, inference_pb2, job_spec_pb2, training_pb2

SPEC_WITH_MISTAKES = """\
experiment = "typos"
task = "regresion"
epochs = "three"

[architecture]
input_shape = [4, "x"]
output_size = 2
mlp = { hidden_sizes = [8] }

[architecture.cnn4d]
kernal_size = 3

[data]
dataset = "table"
train_splt = "train"

[optimizer]
lr = true
"""


def problem_lines(error: pytest.ExceptionInfo[ValueError]) -> list[str]:
    return [line.strip() for line in str(error.value).splitlines()[1:]]


def test_every_problem_in_a_toml_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC_WITH_MISTAKES)
    with pytest.raises(ValueError, match=r"spec.toml has 7 problems:\n") as caught:
        from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert problem_lines(caught) == [
        f'{path}:2: task: "regresion" is not one of classification, regression; did you mean regression?',
        f'{path}:3: epochs: expected a whole number, got "three"',
        f'{path}:6: architecture.input_shape[1]: expected a whole number, got "x"',
        f"{path}:10: architecture.cnn4d: mlp is set too; set only one of mlp, cnn2d, cnn4d, lstm, transformer, python",
        f"{path}:11: architecture.cnn4d.kernal_size: unknown key; did you mean kernel_size?",
        f"{path}:15: data.train_splt: unknown key; did you mean train_split?",
        f"{path}:18: optimizer.lr: expected a number, got true",
    ]
    assert "camel" not in str(caught.value) and "trainSplit" not in str(caught.value)


def test_a_quoted_number_in_a_toml_file_is_refused_where_a_number_belongs(tmp_path):
    """TOML has numbers of its own, so `epochs = "5"` is a mistake; true is not a number even
    though Python's bool is an int; a whole number where a float belongs is fine."""
    path = tmp_path / "spec.toml"
    path.write_text(
        'epochs = "5"\nbatch_size = true\nseed = 7\n\n[architecture]\ninput_shape = [4, "8"]\n'
        'output_size = 2\n\n[optimizer]\nlr = "1e-3"\nmomentum = 1\nnesterov = 1\n'
        '\n[lr_schedule.step]\nstep_size = "2"\n'
    )
    with pytest.raises(ValueError, match=r"spec.toml has 6 problems:\n") as caught:
        from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert problem_lines(caught) == [
        f'{path}:1: epochs: expected a whole number, got the string "5"; write it without quotes',
        f"{path}:2: batch_size: expected a whole number, got true",
        f'{path}:6: architecture.input_shape[1]: expected a whole number, got the string "8"; '
        "write it without quotes",
        f'{path}:10: optimizer.lr: expected a number, got the string "1e-3"; write it without quotes',
        f"{path}:12: optimizer.nesterov: expected true or false, got 1",
        f'{path}:15: lr_schedule.step.step_size: expected a whole number, got the string "2"; '
        "write it without quotes",
    ]
    path.write_text("epochs = 5\n[optimizer]\nlr = 1\nmomentum = 0.9\n")
    spec = from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert (spec.epochs, spec.optimizer.lr, spec.optimizer.momentum) == (5, 1.0, 0.9)


def test_a_quoted_number_in_a_sweep_file_is_refused_in_its_base_spec_too(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'strategy = "random"\nmax_trials = "4"\nmetric = "val_loss"\n\n[base]\nepochs = "2"\n\n'
        '[[parameters]]\npath = "optimizer.lr"\nrange = { min = "1e-4", max = 0.1 }\n'
    )
    with pytest.raises(ValueError, match=r"sweep.toml has 3 problems:\n") as caught:
        from_dict(training_pb2.SweepSpec, load_toml(path), "sweep")
    assert problem_lines(caught) == [
        f'{path}:2: max_trials: expected a whole number, got the string "4"; write it without quotes',
        f'{path}:6: base.epochs: expected a whole number, got the string "2"; write it without quotes',
        f'{path}:10: parameters[0].range.min: expected a number, got the string "1e-4"; '
        "write it without quotes",
    ]


def test_a_dict_may_spell_numbers_as_proto_json_does():
    """MessageToDict writes int64 fields as strings; its output goes back in as it came out."""
    spec = job_spec_pb2.JobSpec(epochs=5, seed=2**40)
    spec.optimizer.lr = 1e-3
    again = from_dict(job_spec_pb2.JobSpec, json_format.MessageToDict(spec, preserving_proto_field_name=True))
    assert again == spec


def test_a_quoted_number_is_digits_0_to_9():
    """str.isdigit() passes "²", which int() refuses (it ended the check with int()'s message),
    and "٣", which int() read as 3."""
    with pytest.raises(ValueError, match=r"^spec has 2 problems:\n") as caught:
        from_dict(job_spec_pb2.JobSpec, {"epochs": "\u00b2", "batch_size": "\u0663"})
    assert problem_lines(caught) == [
        'epochs: expected a whole number, got "\\u00b2"',
        'batch_size: expected a whole number, got "\\u0663"',
    ]


def test_a_table_of_the_file_keeps_its_place_in_it(tmp_path):
    """`tessera models push --spec` passes the [architecture] table on its own."""
    path = tmp_path / "model.toml"
    path.write_text("[architecture]\ninput_shape = [4]\n\n[architecture.mlp]\nhiden_sizes = [8]\n")
    with pytest.raises(ValueError, match="hiden_sizes") as caught:
        from_dict(architecture_pb2.Architecture, load_toml(path)["architecture"], "architecture")
    assert str(caught.value) == (
        f"{path}:5: architecture.mlp.hiden_sizes: unknown key; did you mean hidden_sizes?"
    )


def test_problems_in_a_dict_are_named_without_lines():
    with pytest.raises(ValueError, match=r"^spec has 4 problems:\n") as caught:
        from_dict(
            job_spec_pb2.JobSpec,
            {"epoks": 3, "early_stopping": {"mode": "maximum"}, "tags": {"team": 7}, "devices": []},
        )
    assert problem_lines(caught) == [
        "epoks: unknown key; did you mean epochs?",
        'early_stopping.mode: "maximum" is not one of min, max; did you mean max?',
        "tags.team: expected text in quotes, got 7",
        "devices: expected a table, got a list",
    ]
    with pytest.raises(
        ValueError, match=r"^config: runtime: \"onx\" is not one of onnx, torch; did you mean onnx\?$"
    ):
        from_dict(inference_pb2.ServingConfig, {"runtime": "onx"}, "config")


def test_an_enum_value_far_from_any_lists_the_values_once():
    """A sweep's `strategy = "bayes"` read "is not one of grid, random, ... (known: grid,
    random, ...)": the values twice."""
    with pytest.raises(ValueError, match=r'^config: runtime: "tensorrt" is not one of onnx, torch$'):
        from_dict(inference_pb2.ServingConfig, {"runtime": "tensorrt"}, "config")


def test_a_key_of_a_table_below_names_that_table(tmp_path):
    """A newcomer writes `lr` or `dataset` at the spec's top; TOML takes the dotted key as the fix."""
    path = tmp_path / "spec.toml"
    path.write_text('experiment = "clips"\nlr = 0.01\ndataset = "clips"\nmodel = "m"\n')
    with pytest.raises(ValueError, match=r"spec.toml has 3 problems:\n") as caught:
        from_dict(job_spec_pb2.JobSpec, load_toml(path))
    assert problem_lines(caught) == [
        f"{path}:2: lr: unknown key; did you mean optimizer.lr?",
        f"{path}:3: dataset: unknown key; did you mean data.dataset?",
        f"{path}:4: model: unknown key; did you mean register_as.model or init_from.model?",
    ]
    path.write_text('experiment = "clips"\noptimizer.lr = 0.01\ndata.dataset = "clips"\n')
    assert from_dict(job_spec_pb2.JobSpec, load_toml(path)).optimizer.lr == 0.01


def test_numbers_out_of_range_and_unknown_keys_far_from_any_name():
    with pytest.raises(ValueError, match=r"^sweep has 3 problems:\n") as caught:
        from_dict(
            training_pb2.SweepSpec, {"max_trials": 2**40, "zzz": 1, "parameters": [{"pth": "x"}]}, "sweep"
        )
    assert problem_lines(caught) == [
        "max_trials: 1099511627776 is out of range: expected a whole number from -2147483648 to 2147483647",
        "zzz: unknown key",
        "parameters[0].pth: unknown key; did you mean path?",
    ]


def test_friendly_spellings_still_parse():
    spec = from_dict(
        job_spec_pb2.JobSpec,
        {
            "task": "Regression",
            "data": {"dataset": "clips:3"},
            "early_stopping": {"mode": "OPTIMIZE_MODE_MAX"},
            "registerAs": {"model": "m"},
            "epochs": 3.0,
            "lr_schedule": {"constant": {}},
        },
    )
    assert spec.task == job_spec_pb2.TASK_REGRESSION
    assert spec.early_stopping.mode == job_spec_pb2.OPTIMIZE_MODE_MAX
    assert (spec.register_as.model, spec.epochs, spec.data.dataset.version) == ("m", 3, 3)
    assert spec.lr_schedule.WhichOneof("schedule") == "constant"


def test_load_toml_reads_what_tomllib_reads(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC_WITH_MISTAKES)
    assert load_toml(path) == tomllib.loads(SPEC_WITH_MISTAKES)
    path.write_bytes(b"\xff = 1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_toml(path)


def test_key_lines_follow_tables_arrays_of_tables_and_values_over_several_lines():
    text = """\
# a comment with key = value
name = "a = b # not a comment"
"quoted.key" = 1
dotted.inner = 2
list = [
  1,
  { key = 3 },
]
doc = \"\"\"
fake = 4
[fake]
\"\"\"
after = 5

[table]
x = 6

[[runs]]
y = 7

[[runs]]
y = 8

[[runs.steps]]
z = 9
"""
    lines = key_lines(text)
    assert lines[("name",)] == 2
    assert lines[("quoted.key",)] == 3
    assert lines[("dotted", "inner")] == 4
    assert lines[("list",)] == 5 and ("key",) not in lines
    assert lines[("doc",)] == 9 and ("fake",) not in lines
    assert lines[("after",)] == 13
    assert lines[("table", "x")] == 16
    assert (lines[("runs", 0, "y")], lines[("runs", 1, "y")]) == (19, 22)
    assert lines[("runs", 1, "steps", 0, "z")] == 25


def test_dotted_names_read_like_toml():
    assert dotted_name(("architecture", "cnn4d", "kernel_size")) == "architecture.cnn4d.kernel_size"
    assert dotted_name(("parameters", 0, "path")) == "parameters[0].path"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"optimizer": {"learning_rate": 0.1}}, "optimizer.learning_rate: unknown key; did you mean lr?"),
        ({"learning_rate": 0.1}, "learning_rate: unknown key; did you mean optimizer.lr?"),
        (
            {"lr_schedule": {"cosine": {"eta_min": 0.0}}},
            "lr_schedule.cosine.eta_min: unknown key; did you mean min_lr?",
        ),
    ],
)
def test_another_librarys_name_for_a_field_is_answered_with_the_specs(spec: dict, problem: str) -> None:
    with pytest.raises(ValueError, match="unknown key") as caught:
        from_dict(job_spec_pb2.JobSpec, spec)
    assert str(caught.value) == f"spec: {problem}"


def test_a_zero_written_in_a_spec_reaches_the_daemon_as_written(tmp_path):
    """A field whose unset value takes a default (batch_size 32) carries an explicit 0 as set, so
    that the daemon refuses it by name instead of training with the default."""
    path = tmp_path / "spec.toml"
    path.write_text(
        "epochs = 0\nmax_steps = 0\nbatch_size = 0\nlog_every_n_steps = 0\nbackbone_lr_scale = 0.0\n"
        "[optimizer]\nlr = 0.0\nbeta1 = 0.0\nbeta2 = 0.0\neps = 0.0\n"
        "[lr_schedule.one_cycle]\nmax_lr = 0.0\npct_start = 0.0\n"
        "[checkpoints]\nevery_n_epochs = 0\nkeep_last = 0\n"
        "[devices]\ncpu = true\ncpu_processes = 0\n"
    )
    spec = from_dict(job_spec_pb2.JobSpec, load_toml(path))
    given = [
        (spec, ("epochs", "max_steps", "batch_size", "log_every_n_steps", "backbone_lr_scale")),
        (spec.optimizer, ("lr", "beta1", "beta2", "eps")),
        (spec.lr_schedule.one_cycle, ("max_lr", "pct_start")),
        (spec.checkpoints, ("every_n_epochs", "keep_last")),
        (spec.devices, ("cpu_processes",)),
    ]
    assert [name for message, names in given for name in names if not message.HasField(name)] == []
    assert from_dict(job_spec_pb2.JobSpec, {"lr_schedule": {"step": {"gamma": 0}}}).lr_schedule.step.HasField(
        "gamma"
    )

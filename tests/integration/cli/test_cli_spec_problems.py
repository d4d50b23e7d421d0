"""`tessera train` with a spec full of typos: one failure that lists every problem with its
line, in the TOML's own names, before anything reaches the daemon."""

from __future__ import annotations

import numpy as np

from tessera.cli import EXIT_DAEMON

SPEC = """\
experiment = "typos"
task = "clasification"
epochs = "2"

[architecture]
input_shape = [4]
output_size = 2

[architecture.mlp]
hiden_sizes = [8]

[data]
dataset = "table"
train_split = 0.8
"""


def test_train_reports_every_problem_of_the_spec_with_its_line(tessera_cli, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    result = tessera_cli("train", str(spec))
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.splitlines() == [
        f"tessera: {spec} has 4 problems:",
        f'  {spec}:2: task: "clasification" is not one of classification, regression; '
        "did you mean classification?",
        f'  {spec}:3: epochs: expected a whole number, got the string "2"; write it without quotes',
        f"  {spec}:10: architecture.mlp.hiden_sizes: unknown key; did you mean hidden_sizes?",
        f"  {spec}:14: data.train_split: expected text in quotes, got 0.8",
    ]
    assert "hidenSizes" not in result.err and "trainSplit" not in result.err


def test_sweep_reports_a_quoted_number_with_its_line(tessera_cli, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        'strategy = "random"\nmax_trials = 4\nmetric = "val_loss"\n\n[base]\nbatch_size = "16"\n\n'
        '[[parameters]]\npath = "optimizer.lr"\nrange = { min = 1e-4, max = 0.1 }\n'
    )
    result = tessera_cli("sweep", str(spec))
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.strip() == (
        f'tessera: {spec}:6: base.batch_size: expected a whole number, got the string "16"; '
        "write it without quotes"
    )


def test_models_push_names_the_architecture_problem_by_its_place_in_the_file(tessera_cli, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text(SPEC)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"not read: the spec fails first")
    result = tessera_cli("models", "push", "typos", str(weights), "--spec", str(spec))
    assert result.code == 1
    assert result.err.strip() == (
        f"tessera: {spec}:10: architecture.mlp.hiden_sizes: unknown key; did you mean hidden_sizes?"
    )


def test_train_from_an_unknown_version_says_so_through_the_daemon(tessera_cli, tmp_path):
    spec = tmp_path / "finetune.toml"
    spec.write_text('init_from = { model = "nope", version = 3 }\nfreeze = ["features.*"]\n')
    result = tessera_cli("train", str(spec))
    assert result.code == EXIT_DAEMON and "Traceback" not in result.err
    assert "spec.init_from: model 'nope' does not exist" in result.err, result.err


def test_train_names_input_shape_and_output_size_where_the_spec_sets_them(
    tessera_cli, tmp_path, table_dataset
):
    # They sit in [architecture], beside the family's table: a message naming them inside it
    # (architecture.mlp.input_shape) sends the user to a key the file may not have.
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'experiment = "shapes"\n\n[architecture]\ninput_shape = [4, 1]\n\n[architecture.mlp]\n'
        'hidden_sizes = [8]\n\n[data]\ndataset = "table"\n'
    )
    result = tessera_cli("train", str(spec))
    assert result.code == EXIT_DAEMON and "Traceback" not in result.err
    assert "spec.architecture.output_size: must be >= 1, got 0" in result.err, result.err
    spec.write_text(
        'experiment = "shapes"\n\n[architecture]\noutput_size = 2\n\n[architecture.cnn2d]\n'
        'channels = [4]\n\n[data]\ndataset = "table"\n'
    )
    result = tessera_cli("train", str(spec))
    assert result.code == EXIT_DAEMON
    assert "spec.architecture.input_shape: must be a non-empty list (C, H, W) (no batch dim), got []" in (
        result.err
    ), result.err


def test_float_class_ids_that_are_whole_numbers_are_told_how_to_cast_them(tessera_cli, client, tmp_path):
    x = np.zeros((8, 4), dtype=np.float32)
    client.datasets.push("wholefloat", x=x, y=np.arange(8) % 2 * 1.0)
    client.datasets.push("halves", x=x, y=np.arange(8) / 2)
    # No finite value to be whole: no cast to suggest.
    client.datasets.push("nans", x=x, y=np.full(8, np.nan), allow_nonfinite=True)
    spec = tmp_path / "spec.toml"
    for dataset, cast in (("wholefloat", True), ("halves", False), ("nans", False)):
        spec.write_text(
            'task = "classification"\nepochs = 1\n[architecture]\ninput_shape = [4]\noutput_size = 2\n'
            f'mlp = {{ hidden_sizes = [8] }}\n[data]\ndataset = "{dataset}"\n'
        )
        refused = tessera_cli("train", str(spec))
        said = " ".join(refused.err.split())
        assert refused.code == EXIT_DAEMON and "use task REGRESSION for float targets" in said, said
        assert ("or cast them: y.astype(np.int64), as every value is whole" in said) == cast, said

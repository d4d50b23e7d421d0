"""Tables at 60, 80, 100 and 120 columns after a real sweep: ids whole, key=value cells never
broken inside a word, and the columns a table is read for kept at 80 columns and up."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence

import onnx
import pytest
from rich.console import Console

from tessera.cli import main
from tessera.cli.output import when_to_the_minute
from tessera.messages import load_toml
from tessera.progress_line import byte_size
from tessera.sweep_commands import params_text, short_value
from tests.integration.sdk.affine import affine_onnx

SPEC = """\
strategy = "random"
metric = "val_loss"
max_trials = 3
max_concurrent = 2
seed = 3

[base]
experiment = "cli-widths"
task = "classification"
epochs = 1
batch_size = 16
data = { dataset = "table", val_split = "val" }
optimizer = { name = "adam", lr = 0.01 }

[base.architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }

[[parameters]]
path = "optimizer.lr"
range = { min = 0.001, max = 0.1, log_scale = true }

[[parameters]]
path = "optimizer.weight_decay"
range = { min = 0.00001, max = 0.001, log_scale = true }
"""

WIDTHS = [60, 80, 100, 120]


@pytest.fixture
def sweep(client, table_dataset, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    return client.training.submit_sweep(load_toml(spec)).wait(poll=0.2).info


def printed(daemon, width: int, *args: str) -> str:
    screen = io.StringIO()
    console = Console(file=screen, width=width, force_terminal=False, color_system=None)
    assert main(["--target", daemon.target, *args], console=console) == 0
    return screen.getvalue()


def shown_whole(text: str, word: str) -> bool:
    """The word stands in a cell on one line, between spaces or rules (a comma may follow)."""
    return re.search(rf"(?<![^\s│]){re.escape(word)}(?![^\s│,])", text) is not None


def assert_whole(text: str, words: Sequence[str]) -> None:
    for word in words:
        assert shown_whole(text, word), f"{word!r} is broken in:\n{text}"


def has_column(text: str, column: str) -> bool:
    return any(line.startswith("┃") and f" {column} " in line for line in text.splitlines())


def assert_plot_whole(text: str, width: int, legend: str, x_end: str) -> None:
    """The plot whose legend starts with `legend` fits `width`, none of its lines folded: 12 rows
    on the y axis, then the x axis, its labels (the last one matching `x_end`) and the legend."""
    lines = text.splitlines()
    first_legend_line = next(i for i, line in enumerate(lines) if line.strip().startswith(legend))
    plot = lines[first_legend_line - 14 : first_legend_line + 1]
    assert all(len(line) <= width for line in plot), text
    assert all(" │" in line for line in plot[:12]), text
    assert re.fullmatch(r"\s*└─+", plot[12]) and re.search(rf"{x_end}$", plot[13]), text


def left_out(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "left out to fit the width" in line)


def value_under_key(lines: Sequence[str], run_id: str, key: str, value: str) -> bool:
    """`value` on the line below `key=`, in the same column, within the rows of run `run_id`:
    from its line to the next run's (the first column, rank, is blank between them)."""
    start = next(i for i, line in enumerate(lines) if run_id in line)
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"[│ ]\s*\d+\s*│", lines[i])), len(lines))
    for line, below in itertools.pairwise(lines[start:end]):
        column = line.find(f" {key}=")
        if column >= 0 and re.match(rf"\s+{re.escape(value)}(?![^\s│])", below[column:]):
            return True
    return False


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_leaderboard_keeps_params_whole(daemon, client, sweep, width):
    runs = [r for r in client.training.runs("cli-widths")]
    text = printed(daemon, width, "runs", "leaderboard", "cli-widths", "val_loss")
    assert all(len(line) <= width for line in text.splitlines()), text
    assert_whole(text, [r.run_id for r in runs] + [r.name for r in runs])
    if width >= 80:
        assert has_column(text, "params that differ") and not left_out(text)
    if has_column(text, "params that differ"):
        # In full where that fits, else with 4 significant digits under the key: by its full path
        # either way (`lr=` or `weight_decay=` alone left the reader to guess which field it was).
        lines = text.splitlines()
        for r in runs:
            for path in ("optimizer.lr", "optimizer.weight_decay"):
                full, short = f"{path}={r.params[path]}", short_value(r.params[path])
                assert shown_whole(text, full) or value_under_key(lines, r.run_id, path, short), (
                    f"{full} is broken in:\n{text}"
                )
    else:
        assert "params that differ" in left_out(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_ls_keeps_metrics_at_80_columns(daemon, client, sweep, width):
    runs = [r for r in client.training.runs("cli-widths")]
    text = printed(daemon, width, "runs", "ls", "--experiment", "cli-widths")
    assert all(len(line) <= width for line in text.splitlines()), text
    assert_whole(text, [r.run_id for r in runs] + [r.name for r in runs])
    if width >= 80:
        assert has_column(text, "metrics (last values)")
    if has_column(text, "metrics (last values)"):
        assert_whole(text, [f"{m.key}={m.last:.4g}" for r in runs for m in r.metrics])
    else:
        assert "metrics (last values)" in left_out(text)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ["show", "leaderboard"])
def test_sweeps_show_keeps_params_whole(daemon, sweep, width, command):
    args = (
        ["sweeps", "show", sweep.sweep_id]
        if command == "show"
        else ["sweeps", "show", sweep.sweep_id, "--follow"]
    )
    text = printed(daemon, width, *args)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert_plot_whole(text, width, "• best val_loss so far", "trials 3")
    assert_whole(text, [t.job_id for t in sweep.trials])
    if width >= 80:
        assert has_column(text, "params") and "params" not in left_out(text)
    if has_column(text, "params"):
        assert_whole(text, [word.rstrip(",") for t in sweep.trials for word in params_text(t.params).split()])
    else:
        assert "params" in left_out(text)


@pytest.mark.parametrize("width", [w for w in WIDTHS if w >= 80])
def test_a_sweeps_leaderboard_keeps_its_trials_states_at_80_columns(daemon, sweep, width):
    # Left out first, it ranked pruned and complete trials together with nothing to tell them apart.
    text = printed(daemon, width, "sweeps", "show", sweep.sweep_id, "--follow")
    board = text[text.index(f"sweep {sweep.sweep_id}: succeeded, best val_loss") :]
    board = board[: board.index("left out") if "left out" in board else board.index("• best val_loss so far")]
    assert has_column(board, "state") and has_column(board, "params"), board
    assert_whole(board, ["succeeded"])


@pytest.mark.parametrize("width", WIDTHS)
def test_listings_keep_names_tags_and_headers_whole(daemon, client, sweep, tmp_path, width):
    model = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("affine-classifier-production", model, set_alias="production")
    client.models.push("affine-classifier-production", model, set_alias="staging", description="a second try")
    client.training.update_experiment(
        "cli-widths", description="lr and weight decay search", set_tags={"purpose": "width-checks"}
    )
    models = printed(daemon, width, "models", "ls")
    if has_column(models, "aliases"):
        assert_whole(models, ["production=1", "staging=2"])
    experiments = printed(daemon, width, "experiments", "ls")
    if has_column(experiments, "tags"):
        assert_whole(experiments, ["purpose=width-checks"])
    versions = printed(daemon, width, "models", "versions", "affine-classifier-production")
    assert has_column(versions, "aliases") and has_column(versions, "created")
    # A size broken after its number ("44.6" over "KiB") read as two values.
    size = byte_size(client.models.version("affine-classifier-production").size_bytes)
    assert_whole(versions, ["production", "staging,", "onnx", size])
    shown = printed(daemon, width, "models", "show", "affine-classifier-production")
    assert_whole(shown, [client.models.version("affine-classifier-production").sha256])
    jobs = printed(daemon, width, "jobs", "ls")
    assert_whole(jobs, [t.job_id for t in sweep.trials] + ["succeeded"])
    if width >= 80:
        assert has_column(models, "aliases") and has_column(experiments, "tags")
        assert has_column(jobs, "train_loss")
        assert all(len(line) <= width for line in shown.splitlines()), shown
    sweeps = printed(daemon, width, "sweeps", "ls")
    if width >= 80:
        assert has_column(sweeps, "best"), sweeps
        assert_whole(sweeps, ["succeeded", "val_loss"])
    if has_column(sweeps, "best"):
        # With its job where that fits, else its trial alone.
        best = next(t for t in sweep.trials if t.job_id == sweep.best_job_id)
        assert shown_whole(sweeps, f"{best.job_id})") or shown_whole(sweeps, f"{best.number})"), sweeps
    for text in (models, experiments, versions, jobs, sweeps):
        assert all(len(line) <= width for line in text.splitlines()), text


def test_models_versions_shows_descriptions_cut_short_at_80_columns(
    daemon, client, tmp_path, capsys, monkeypatch
):
    """At 80 columns a versions table of sizes in KiB left its descriptions out whole: each is
    shown on one line, a long one cut with an ellipsis, the sizes kept whole and the times to
    the minute, on one line."""
    model = onnx.load(affine_onnx(tmp_path / "affine.onnx"))
    # A size with a decimal and a unit ("293.3 KiB"), as most models' are.
    model.doc_string = "x" * 300_000
    onnx.save(model, tmp_path / "affine.onnx")
    name = "affine-classifier-production"
    long = "the first of a line of affine classifiers, trained on the clips of the spring"
    client.models.push(name, tmp_path / "affine.onnx", set_alias="production", description=long)
    client.models.push(name, tmp_path / "affine.onnx", set_alias="staging", description="a second try")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--target", daemon.target, "models", "versions", name]) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert has_column(text, "description") and not left_out(text), text
    versions = list(client.models.versions(name))
    assert_whole(text, [byte_size(versions[0].size_bytes), "production", "staging"])
    for version in versions:
        assert_whole(text, [str(when_to_the_minute(version.created_at))])
    assert_whole(text, ["a second try"])
    shown = next(line for line in text.splitlines() if "│ production" in line)
    assert "…" in shown and long not in text, text


def test_the_columns_variable_sets_the_width(daemon, client, sweep, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--target", daemon.target, "runs", "leaderboard", "cli-widths", "val_loss"]) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert has_column(text, "params that differ") and not left_out(text)


JOB_SPEC = """\
experiment = "cli-widths"
task = "classification"
epochs = 2
batch_size = 8
log_every_n_steps = 1
data = { dataset = "table", val_split = "val" }

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
"""


def test_a_followed_jobs_loss_plot_fits_the_columns_variable(
    daemon, client, table_dataset, tmp_path, capsys, monkeypatch
):
    # `jobs watch` of an ended job prints what `train --follow` prints at its end: the summary,
    # then the loss plot, whose grid was 60 columns whatever the terminal.
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    job = client.training.submit(load_toml(spec)).wait()
    for width in (60, 80):
        monkeypatch.setenv("COLUMNS", str(width))
        assert main(["--target", daemon.target, "jobs", "watch", job.id]) == 0
        text = capsys.readouterr().out
        assert all(len(line) <= width for line in text.splitlines()), text
        assert_plot_whole(text, width, "• train_loss", rf"step {job.info.step}")


def test_a_wide_terminal_gets_tables_as_wide_as_their_cells(daemon, client, capsys, monkeypatch):
    """A terminal of 220 columns (COLUMNS, as a shell sets it) gets a row of 190 on one line,
    not wrapped at 110 or 120; without COLUMNS, a pipe (no terminal) gets 80."""
    run = client.training.create_run("cli-wide", create_experiment=True)
    metrics = {f"metric_{i:02d}": 0.5 for i in range(6)}
    client.training.log_metrics(run.run_id, metrics, step=0)
    listed = ", ".join(f"{key}=0.5" for key in metrics)
    monkeypatch.setenv("COLUMNS", "220")
    assert main(["--target", daemon.target, "runs", "ls", "--experiment", "cli-wide"]) == 0
    wide = capsys.readouterr().out
    assert shown_whole(wide, listed) and 120 < max(len(line) for line in wide.splitlines()) <= 220, wide
    monkeypatch.delenv("COLUMNS")
    assert main(["--target", daemon.target, "runs", "ls", "--experiment", "cli-wide"]) == 0
    piped = capsys.readouterr().out
    assert max(len(line) for line in piped.splitlines()) <= 80, piped


def test_runs_leaderboard_keeps_params_of_long_keys_by_their_shortest_distinct_tail(daemon, client):
    training = client.training
    key = "architecture.transformer_encoder.attention_dropout"
    for i, name in enumerate(("first", "second")):
        with training.start_run("long-keys", name, {key: 0.1 * (i + 1)}, create_experiment=True) as run:
            run.log_metric("val_loss", 1.0 - i / 4, 1)
    text = printed(daemon, 80, "runs", "leaderboard", "long-keys", "val_loss")
    assert has_column(text, "params that differ") and not left_out(text), text
    lines = text.splitlines()
    for r in training.runs("long-keys"):
        assert value_under_key(lines, r.run_id, "attention_dropout", short_value(r.params[key])), text

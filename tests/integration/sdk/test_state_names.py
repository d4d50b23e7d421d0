"""A run's status and a loaded version's state read as words: `tessera.RunStatus` and
`tessera.LoadState` of the numbers the messages hold, as `tessera.JobState` is a job's."""

from __future__ import annotations

import tessera


def test_a_runs_status_reads_as_a_word_and_filters_runs(client):
    run = client.training.create_run("words", create_experiment=True)
    assert tessera.RunStatus.from_proto(run.status) is tessera.RunStatus.RUNNING
    client.training.update_run(run.run_id, status=tessera.RunStatus.SUCCEEDED)
    (listed,) = client.training.runs("words", statuses=[tessera.RunStatus.SUCCEEDED])
    assert tessera.RunStatus.from_proto(listed.status) == "succeeded"
    assert list(client.training.runs("words", statuses=[tessera.RunStatus.FAILED])) == []
    assert tessera.RunStatus.SUCCEEDED.finished and not tessera.RunStatus.RUNNING.finished


def test_a_loaded_versions_state_reads_as_a_word(client, onnx_file):
    client.models.push("affine", onnx_file)
    client.inference.load("affine", 1)
    (loaded,) = client.inference.loaded("affine")
    assert tessera.LoadState.from_proto(loaded.state) is tessera.LoadState.READY
    assert str(tessera.LoadState.READY) == "ready"

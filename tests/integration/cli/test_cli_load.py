"""`tessera load`: loads a version, and --response-cache turns the daemon's response cache on
for it, so that a second identical predict is answered from the cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.affine import affine_onnx


@pytest.fixture
def daemon(data_dir: Path) -> Iterator[InProcessDaemon]:
    """The CLI fixtures' daemon, with a response cache budget."""
    running = InProcessDaemon(daemon_settings(data_dir, **{"serving.response_cache_size": 1 << 20})).start()
    yield running
    running.stop()


def test_load_with_response_cache_answers_a_repeated_predict_from_the_cache(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    plain = tessera_cli("load", "affine", "--max-batch-size", "4")
    assert plain.code == 0, plain.err
    assert "affine" in plain.out and "off" in plain.out
    cached = tessera_cli("--json", "load", "affine", "--response-cache").json()
    assert cached["config"]["response_cache"] is True and cached["state"] == "ready"
    listed = tessera_cli("serve-status", "affine")
    assert listed.code == 0 and "response cache" in listed.out and " on " in listed.out

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    for _ in range(2):
        assert tessera_cli("predict", "affine", "--input", str(inputs)).code == 0
    (stats,) = client.inference.stats("affine")
    assert (stats.cache_miss_count, stats.cache_hit_count) == (1, 1)


def test_load_help_says_when_the_cache_is_safe(tessera_cli, capsys):
    with pytest.raises(SystemExit):
        tessera_cli("load", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "deterministic" in text and "serving.response_cache_size" in text

"""`tessera load` and `tessera unload`: every ServingConfig field has a flag; a reload replaces the
config unless --keep-config starts from the one the version runs with; --response-cache turns the
daemon's response cache on, so that a second identical predict is answered from the cache; unload
frees versions, and fails with NOT_FOUND where nothing is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tessera
from tessera.cli import EXIT_DAEMON, EXIT_FAILED, EXIT_USAGE
from tesserad.errors import Unavailable
from tesserad.serving.service import InferenceService
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


EVERY_OPTION = {
    "runtime": "onnx",
    "device": "cpu",
    "instances": 1,
    "max_batch_size": 4,
    "max_queue_delay_us": 250,
    "max_queue_size": 16,
    "warmup_runs": 3,
    "intra_op_threads": 1,
    "response_cache": True,
}


def flags(config: dict[str, object]) -> list[str]:
    """`tessera load` flags setting `config` (ServingConfig field names)."""
    words: list[str] = []
    for name, value in config.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return words


def test_load_sets_every_serving_config_field(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    loaded = tessera_cli("--json", "load", "affine", *flags(EVERY_OPTION))
    assert loaded.code == 0, loaded.err
    assert loaded.json()["config"] == EVERY_OPTION
    (listed,) = client.inference.loaded("affine")
    assert (listed.config.max_queue_delay_us, listed.config.warmup_runs) == (250, 3)


def test_a_reload_takes_the_defaults_unless_told_to_keep_the_config(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    assert tessera_cli("load", "affine", *flags(EVERY_OPTION)).code == 0
    kept = tessera_cli(
        "--json", "load", "affine", "--keep-config", "--max-batch-size", "8", "--no-response-cache"
    )
    assert kept.code == 0, kept.err
    assert kept.json()["config"] == {**EVERY_OPTION, "max_batch_size": 8, "response_cache": False}
    # By alias ("latest") too: the version it names now is the one whose config is kept.
    again = tessera_cli("--json", "load", "affine", "--version", "latest", "--keep-config")
    assert again.json()["config"] == kept.json()["config"]

    reset = tessera_cli("--json", "load", "affine", "--max-batch-size", "8").json()["config"]
    assert reset["max_batch_size"] == 8
    assert (reset.get("max_queue_delay_us", 0), reset["max_queue_size"], reset["warmup_runs"]) == (0, 1024, 2)
    assert reset["response_cache"] is False


def test_an_explicit_zero_overrides_a_non_zero_daemon_default(tessera_cli, tmp_path):
    # An idle model holds a lone request up to the delay: 10 s by the daemon's default here.
    held = InProcessDaemon(
        daemon_settings(
            tmp_path / "held", **{"serving.max_queue_delay_us": 10_000_000, "serving.warmup_runs": 3}
        )
    ).start()
    try:
        with tessera.Client(held.target) as client:
            client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
            x = {"input": np.ones((1, 4), np.float32)}

            def load(*words: str) -> dict[str, object]:
                result = tessera_cli("--json", "load", "affine", *words, target=held.target)
                assert result.code == 0, result.err
                config: dict[str, object] = result.json()["config"]
                return config

            zero = load("--max-queue-delay-us", "0", "--warmup-runs", "0", "--intra-op-threads", "0")
            assert (zero["max_queue_delay_us"], zero["warmup_runs"]) == (0, 0)
            (listed,) = client.inference.loaded("affine")
            assert listed.config.HasField("max_queue_delay_us") and listed.config.max_queue_delay_us == 0
            # Not held: answered well within a deadline the daemon's default delay would pass.
            client.inference.predict("affine", x, timeout=5.0)
            # --keep-config keeps the zeros, which ListLoaded sets.
            kept = load("--keep-config", "--max-batch-size", "8")
            assert (kept["max_queue_delay_us"], kept["warmup_runs"], kept["max_batch_size"]) == (0, 0, 8)

            # Without the flags, the daemon's defaults, and a lone request waits out the delay.
            default = load()
            assert (default["max_queue_delay_us"], default["warmup_runs"]) == (10_000_000, 3)
            with pytest.raises(tessera.DeadlineExceeded):
                client.inference.predict("affine", x, timeout=1.0)
    finally:
        held.stop()


def test_keep_config_of_a_version_not_loaded_fails_and_loads_nothing(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    result = tessera_cli("load", "affine", "--keep-config", "--max-batch-size", "8")
    assert result.code == EXIT_FAILED and "Traceback" not in result.err
    assert result.err.startswith(
        "tessera: model 'affine' version 1 is not loaded, so it has no config to keep"
    )
    assert "without --keep-config" in result.err and "tessera serve-status" in result.err
    assert list(client.inference.loaded()) == []
    missing = tessera_cli("load", "affine", "--version", "7", "--keep-config")
    assert missing.code == EXIT_FAILED and "version 7 is not loaded" in missing.err
    absent = tessera_cli("load", "absent", "--keep-config")
    assert absent.code == EXIT_DAEMON and absent.err.startswith("tessera: NOT_FOUND: ")


def test_load_options_out_of_range_are_refused_before_anything_loads(tessera_cli, client, tmp_path, capsys):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    for bad in (
        ["--max-queue-delay-us", "-1"],
        ["--max-queue-delay-us", "20000000"],
        ["--warmup-runs", "-1"],
        ["--runtime", "tensorrt"],
    ):
        with pytest.raises(SystemExit) as exited:
            tessera_cli("load", "affine", *bad)
        assert exited.value.code == EXIT_USAGE
        assert bad[0] in capsys.readouterr().err
    torch = tessera_cli("load", "affine", "--runtime", "torch")
    assert torch.code == EXIT_DAEMON and torch.err.startswith(
        "tessera: FAILED_PRECONDITION: the torch runtime"
    )
    assert list(client.inference.loaded()) == []


def test_unload_frees_the_version_and_says_so(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    for version in ("1", "2"):
        assert tessera_cli("load", "affine", "--version", version).code == 0
    one = tessera_cli("unload", "affine", "--version", "1")
    assert one.code == 0, one.err
    assert one.out.strip() == "unloaded affine v1"
    assert [m.version for m in client.inference.loaded("affine")] == [2]
    assert tessera_cli("load", "affine", "--version", "1").code == 0
    every = tessera_cli("--json", "unload", "affine")
    assert every.code == 0 and [(m["version"], m["model"]) for m in every.json()] == [
        (1, "affine"),
        (2, "affine"),
    ]
    assert list(client.inference.loaded()) == []


def test_unload_of_what_is_not_loaded_fails_with_not_found(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    nothing = tessera_cli("unload", "affine")
    assert nothing.code == EXIT_DAEMON and nothing.out == "" and "Traceback" not in nothing.err
    assert nothing.err.strip() == (
        "tessera: NOT_FOUND: model 'affine' has no loaded version, so there is nothing to unload "
        "(`tessera serve-status` lists what is loaded)"
    )
    assert tessera_cli("load", "affine").code == 0
    other = tessera_cli("unload", "affine", "--version", "2")
    assert other.code == EXIT_DAEMON
    assert other.err.startswith(
        "tessera: NOT_FOUND: model 'affine' version 2 is not loaded (loaded versions: 1)"
    )
    alias = tessera_cli("unload", "affine", "--version", "production")
    assert alias.code == EXIT_DAEMON and alias.err.startswith("tessera: NOT_FOUND: ")
    absent = tessera_cli("unload", "absent")
    assert absent.code == EXIT_DAEMON and absent.err.startswith(
        "tessera: NOT_FOUND: model 'absent' does not exist"
    )
    assert [m.version for m in client.inference.loaded("affine")] == [1]


def test_load_help_says_a_reload_replaces_the_config(tessera_cli, capsys):
    with pytest.raises(SystemExit):
        tessera_cli("load", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "replaces the version's whole serving config" in text and "--keep-config" in text
    for flag in (
        "--runtime",
        "--max-queue-delay-us",
        "--max-queue-size",
        "--warmup-runs",
        "--intra-op-threads",
    ):
        assert flag in text
    assert "microseconds" in text and "serving.max_queue_delay_us" in text


def test_unload_of_a_version_whose_failed_load_awaits_its_retry_says_its_failures_are_reset(
    tessera_cli, client, daemon, tmp_path
):
    """A retry pass took the failed listing away and kept the run of failures: the unload ends
    the run and succeeds, saying so, where it printed nothing."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    service = daemon.daemon.inference
    service.pool.list_failure("affine", 1, Unavailable("the registry cannot be read"), "")
    InferenceService.retry_failed_loads(service)  # or the daemon's own pass, which may come first
    assert list(client.inference.loaded("affine")) == [] and service.pool.failure_runs("affine") == {1}
    reset = tessera_cli("unload", "affine", "--version", "1")
    assert reset.code == 0, reset.err
    assert reset.out.strip() == (
        "nothing of affine v1 was loaded; the count of its failed loads is reset: its next failed "
        "load is retried at once"
    )
    assert service.pool.failure_runs("affine") == set()


def test_unload_by_alias_of_a_version_awaiting_its_retry_names_the_alias_as_an_alias(
    tessera_cli, client, daemon, tmp_path
):
    """`--version prod` was said as "nothing of affine vprod was loaded"."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    client.models.set_alias("affine", "prod", 1)
    service = daemon.daemon.inference
    service.pool.list_failure("affine", 1, Unavailable("the registry cannot be read"), "")
    InferenceService.retry_failed_loads(service)
    reset = tessera_cli("unload", "affine", "--version", "prod")
    assert reset.code == 0, reset.err
    assert reset.out.startswith("nothing of affine alias prod was loaded;"), reset.out


def test_load_save_keeps_the_options_for_the_versions_later_loads(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    assert tessera_cli("load", "affine", "--max-batch-size", "4", "--instances", "1", "--save").code == 0
    assert tessera_cli("unload", "affine").code == 0
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    assert tessera_cli("predict", "affine", "--input", str(inputs)).code == 0
    (listed,) = tessera_cli("--json", "serve-status", "affine").json()
    assert (listed["config"]["max_batch_size"], listed["config"]["instances"]) == (4, 1)


def test_keep_config_save_saves_the_options_set_not_the_daemon_s_defaults(
    tessera_cli, client, daemon, tmp_path
):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    assert tessera_cli("load", "affine", "--warmup-runs", "1", "--save").code == 0
    assert tessera_cli("load", "affine", "--instances", "1").code == 0  # a one-off, over the saved
    kept = tessera_cli("--json", "load", "affine", "--keep-config", "--max-batch-size", "8", "--save")
    assert kept.code == 0, kept.err
    # The intra-op threads, queue size and device this daemon worked out stay its own.
    assert daemon.daemon.registry.serving_config("affine", 1) == {
        "warmup_runs": 1,
        "instances": 1,
        "max_batch_size": 8,
    }
    config = kept.json()["config"]
    assert (config["warmup_runs"], config["instances"], config["max_batch_size"]) == (1, 1, 8)

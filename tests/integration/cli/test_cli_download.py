"""`tessera models download` names the file by the artifact's real format: a safetensors
version's bytes were written under whatever name was given, `.onnx` included."""

from __future__ import annotations

import pytest

import tessera
from tessera.cli import EXIT_FAILED, EXIT_USAGE
from tessera.rpc_commands import in_cli_words
from tests.integration.cli.test_cli_datasets import help_text
from tests.integration.cli.test_cli_export import MLP, MLP_SIGNATURE
from tests.integration.registry.conftest import mlp_weights, onnx_identity
from tests.integration.sdk.test_sdk_model_artifact_download_resume import CutOnce, big_onnx
from tests.tcp_proxy import CuttableProxy


def test_a_name_whose_suffix_contradicts_the_format_is_refused_and_nothing_written(
    tessera_cli, client, tmp_path
):
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    into = tmp_path / "out"
    into.mkdir()
    refused = tessera_cli("models", "download", "mlp", str(into / "mlp.onnx"))
    assert refused.code == EXIT_USAGE
    assert "mlp v1 is a safetensors artifact" in refused.err and "name it .safetensors" in refused.err
    assert list(into.iterdir()) == []
    onnx = tmp_path / "identity.onnx"
    onnx.write_bytes(onnx_identity())
    client.models.push("identity", onnx)
    refused = tessera_cli("models", "download", "identity", str(into / "identity.safetensors"))
    assert "identity v1 is an ONNX artifact; name it .onnx" in refused.err
    assert "names a .safetensors file" in refused.err
    neutral = tessera_cli("models", "download", "mlp", str(into / "weights.bin"))
    assert neutral.code == 0 and (into / "weights.bin").read_bytes() == weights.read_bytes()


def test_the_default_name_and_a_directory_carry_the_version_and_the_format(
    tessera_cli, client, tmp_path, monkeypatch
):
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    monkeypatch.chdir(tmp_path)
    default = tessera_cli("models", "download", "mlp")
    assert default.code == 0 and default.out.startswith("wrote mlp-v1.safetensors: ")
    assert (tmp_path / "mlp-v1.safetensors").read_bytes() == weights.read_bytes()
    into = tmp_path / "into"
    into.mkdir()
    as_json = tessera_cli("--json", "models", "download", "mlp", str(into)).json()
    assert as_json["path"] == str(into / "mlp-v1.safetensors")
    assert (into / "mlp-v1.safetensors").read_bytes() == weights.read_bytes()


@pytest.mark.parametrize("flag", [(), ("-o",)])
def test_a_missing_directory_named_with_a_trailing_slash_is_made_and_written_into_as_the_sdk_does(
    tessera_cli, client, tmp_path, monkeypatch, flag
):
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    monkeypatch.chdir(tmp_path)
    wrote = tessera_cli("models", "download", "mlp", *flag, "out/x/")
    assert wrote.code == 0, wrote.err
    assert wrote.out.startswith("wrote out/x/mlp-v1.safetensors: ")
    assert (tmp_path / "out" / "x" / "mlp-v1.safetensors").read_bytes() == weights.read_bytes()
    client.models.download("mlp", "sdk/x/")
    assert (tmp_path / "sdk" / "x" / "mlp-v1.safetensors").read_bytes() == weights.read_bytes()


def test_download_resume_goes_on_from_an_interrupted_download(tessera_cli, daemon, client, tmp_path):
    model = big_onnx(tmp_path / "big.onnx")
    client.models.push("big", model)
    out = tmp_path / "out"
    out.mkdir()
    proxy = CuttableProxy(daemon.daemon.port)
    try:
        with (
            tessera.Client(proxy.target, retry=tessera.RetryPolicy(attempts=1)) as cut_client,
            pytest.raises(tessera.Unavailable) as gave_up,
        ):
            cut_client.models.download("big", out / "big-v1.onnx", progress=CutOnce(proxy), chunk_size=4096)
    finally:
        proxy.close()
    assert "run it again with --resume" in in_cli_words(gave_up.value.message)
    client.models.push("big", big_onnx(tmp_path / "second.onnx", seed=1))
    refused = tessera_cli("models", "download", "big", str(out / "big-v1.onnx"), "--resume")
    assert refused.code == EXIT_FAILED and "the partial download " in refused.err, refused.err
    assert "of big v1 (sha256 " in refused.err and "not of big v2 (sha256 " in refused.err
    assert "without --resume to start again" in refused.err and "big v1 with --resume" in refused.err
    resumed = tessera_cli("models", "download", "big", str(out), "--version", "1", "--resume")
    assert resumed.code == 0, resumed.err
    assert (out / "big-v1.onnx").read_bytes() == model.read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert "--resume" in help_text("models", "download")


def test_a_refused_resume_names_the_path_as_given_though_it_reads_as_an_rpc_or_a_flag(
    tessera_cli, daemon, client, tmp_path
):
    """Only the fix that ends the message (with/without resume=True) is put in the CLI's words:
    a folder called "ListVersions force" was shown as the command and the flag."""
    client.models.push("big", big_onnx(tmp_path / "big.onnx"))
    out = tmp_path / "ListVersions force"
    out.mkdir()
    proxy = CuttableProxy(daemon.daemon.port)
    try:
        with (
            tessera.Client(proxy.target, retry=tessera.RetryPolicy(attempts=1)) as cut_client,
            pytest.raises(tessera.Unavailable),
        ):
            cut_client.models.download("big", out / "big-v1.onnx", progress=CutOnce(proxy), chunk_size=4096)
    finally:
        proxy.close()
    client.models.push("big", big_onnx(tmp_path / "second.onnx", seed=1))
    given = out / "big-v1.onnx"
    refused = tessera_cli("models", "download", "big", str(given), "--resume")
    assert refused.code == EXIT_FAILED
    assert refused.err.startswith(f"tessera: {given}: the partial download {out}/."), refused.err
    assert "without --resume to start again" in refused.err and "big v1 with --resume" in refused.err


def test_the_file_may_be_named_with_output_as_datasets_download_names_it(tessera_cli, client, tmp_path):
    """`datasets download`, `runs artifacts get` and `admin backup` take -o/--output: `models
    download MODEL -o FILE` was refused as "unrecognized arguments"."""
    onnx = tmp_path / "identity.onnx"
    onnx.write_bytes(onnx_identity())
    client.models.push("identity", onnx)
    written = tessera_cli("models", "download", "identity", "-o", str(tmp_path / "a.onnx"))
    assert written.code == 0, written.err
    assert (tmp_path / "a.onnx").read_bytes() == onnx.read_bytes()
    assert tessera_cli("models", "download", "identity", "--output", str(tmp_path / "b.onnx")).code == 0
    assert (tmp_path / "b.onnx").read_bytes() == onnx.read_bytes()
    both = tessera_cli(
        "models", "download", "identity", str(tmp_path / "c.onnx"), "-o", str(tmp_path / "d.onnx")
    )
    assert both.code == EXIT_USAGE
    assert "name the file once" in both.err, both.err
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "d.onnx").exists()


def test_a_number_for_path_is_refused_only_when_nothing_is_named_so_and_no_version_given(
    tessera_cli, client, tmp_path, monkeypatch
):
    """`models download MODEL N`, as `models alias MODEL NAME N` takes a version, wrote the latest
    version into a file named N; the refusal of it also refused a file named N that exists
    (`--force` to replace it) and N given beside --version, where N can be nothing but the file."""
    onnx = tmp_path / "identity.onnx"
    onnx.write_bytes(onnx_identity())
    client.models.push("identity", onnx)
    client.models.push("identity", big_onnx(tmp_path / "second.onnx"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "7").write_bytes(b"old")
    replaced = tessera_cli("models", "download", "identity", "7", "--force")
    assert replaced.code == 0, replaced.err
    assert (tmp_path / "7").read_bytes() == (tmp_path / "second.onnx").read_bytes()
    beside_version = tessera_cli("models", "download", "identity", "2024", "--version", "1")
    assert beside_version.code == 0, beside_version.err
    assert (tmp_path / "2024").read_bytes() == onnx.read_bytes()
    (tmp_path / "3").mkdir()
    into = tessera_cli("models", "download", "identity", "3")
    assert into.code == 0, into.err
    assert (tmp_path / "3" / "identity-v2.onnx").read_bytes() == (tmp_path / "second.onnx").read_bytes()
    refused = tessera_cli("models", "download", "identity", "1")
    assert refused.code == EXIT_USAGE
    assert (
        "'1' would be the file written; for version 1, pass --version 1 (for a file named 1, ./1)"
        in refused.err
    ), refused.err
    assert not (tmp_path / "1").exists()

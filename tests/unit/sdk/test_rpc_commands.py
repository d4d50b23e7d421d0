"""Every RPC that a daemon error message names has a `tessera` command to show instead: the
daemon's source is scanned, so a new message naming an RPC fails here until the CLI maps it."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
from pathlib import Path

import grpc
import pytest

import tesserad.errors
from tessera.cli.parser import build_parser
from tessera.errors import Unavailable, error_for, explain_unreachable, unreachable_message
from tessera.rpc_commands import COMMAND_BY_RPC, in_cli_words
from tessera.v1 import datasets_pb2, inference_pb2, registry_pb2, system_pb2, training_pb2

DAEMON_SOURCE = Path(__file__).resolve().parents[3] / "src" / "tesserad"

RPC_NAMES = {
    method.name
    for module in (registry_pb2, datasets_pb2, training_pb2, inference_pb2, system_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}

ERROR_CLASSES = {
    name
    for module in (tesserad.errors, builtins)
    for name, value in vars(module).items()
    if inspect.isclass(value) and issubclass(value, BaseException)
}


def rpc_names_in_error_messages(source: str) -> set[str]:
    """RPC names written in the strings of `raise` statements, of calls that build an error
    (NotFound(...), ValueError(...)) and of `context.abort(...)`."""
    word = re.compile(r"\b(" + "|".join(sorted(RPC_NAMES, key=len, reverse=True)) + r")\b")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if callee not in ERROR_CLASSES and callee != "abort":
                continue
        elif not isinstance(node, ast.Raise):
            continue
        for part in ast.walk(node):
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                found.update(word.findall(part.value))
    return found


def test_the_scan_finds_rpc_names_in_error_messages_only():
    source = '''
def f(name):
    """GetModel in a docstring is no message."""
    log.info("ListModels called")
    if name:
        raise NotFound(f"model {name!r} does not exist; create it with CreateModel")
    context.abort(grpc.StatusCode.INTERNAL, "try Registry.Deploy")
    return FailedPrecondition("load it with " "LoadModel")
'''
    assert rpc_names_in_error_messages(source) == {"CreateModel", "Deploy", "LoadModel"}


def test_every_rpc_named_in_a_daemon_error_message_has_a_cli_command():
    named: dict[str, list[str]] = {}
    for path in sorted(DAEMON_SOURCE.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for name in rpc_names_in_error_messages(path.read_text(encoding="utf-8")):
            named.setdefault(name, []).append(str(path.relative_to(DAEMON_SOURCE)))
    assert named, "the scan found no message naming an RPC: is it still reading the daemon's source?"
    unmapped = {name: files for name, files in named.items() if name not in COMMAND_BY_RPC}
    assert not unmapped, f"add these RPCs to tessera.rpc_commands.COMMAND_BY_RPC: {unmapped}"


def test_the_table_names_real_rpcs_and_real_commands():
    assert set(COMMAND_BY_RPC) <= RPC_NAMES
    parser = build_parser()
    for command in COMMAND_BY_RPC.values():
        if command.startswith("`tessera "):
            words = [w for w in command.strip("`").split()[1:] if w.islower() and not w.startswith("-")]
            # argparse exits 2 on an unknown (sub)command before it reaches --help, which exits 0.
            with pytest.raises(SystemExit) as exited:
                parser.parse_args([*words, "--help"])
            assert exited.value.code == 0, command


def test_messages_get_cli_words_and_other_words_stay():
    assert in_cli_words("dataset 'clips' does not exist; upload it with UploadDataset") == (
        "dataset 'clips' does not exist; upload it with `tessera datasets push NAME FILE`"
    )
    assert in_cli_words("export it with Registry.ExportOnnx, or load it with runtime torch") == (
        "export it with `tessera export onnx MODEL`, or load it with runtime torch"
    )
    assert (
        in_cli_words("a Deployment, DeployFoo and ExportOnnxes stay")
        == "a Deployment, DeployFoo and ExportOnnxes stay"
    )


def test_only_the_fix_is_put_in_cli_words_and_never_a_name_the_message_quotes():
    """A user's names that read as RPCs or fields (a model called force, a run id or a path
    holding an RPC's name) stay as the user gave them; the fix that ends the message is the CLI's."""
    assert in_cli_words(
        "model 'force' does not exist; did you mean 'forces'? Or create it with CreateModel"
    ) == (
        "model 'force' does not exist; did you mean 'forces'? Or create it with `tessera models push MODEL FILE`"
    )
    assert in_cli_words('run "it\'s ListRuns" does not exist; ListRuns lists them') == (
        'run "it\'s ListRuns" does not exist; `tessera runs ls` lists them'
    )
    assert in_cli_words(
        "/tmp/ListVersions force/m.onnx: the partial download /tmp/ListVersions force/.m.partial holds 4 "
        "bytes of m v1, not of m v2; download it without resume=True to start again"
    ) == (
        "/tmp/ListVersions force/m.onnx: the partial download /tmp/ListVersions force/.m.partial holds 4 "
        "bytes of m v1, not of m v2; download it without --resume to start again"
    )


def test_each_problem_of_a_spec_has_its_fix_in_cli_words():
    """A spec's problems come one to a line, each ending in its own fix."""
    assert in_cli_words(
        "the spec has 2 problems:\n"
        "  spec.data.dataset: dataset 'clips' does not exist; upload it with UploadDataset\n"
        "  spec.init_from.model: model 'base' does not exist; create it with CreateModel"
    ) == (
        "the spec has 2 problems:\n"
        "  spec.data.dataset: dataset 'clips' does not exist; upload it with `tessera datasets push NAME FILE`\n"
        "  spec.init_from.model: model 'base' does not exist; create it with `tessera models push MODEL FILE`"
    )


def test_a_field_to_set_becomes_the_flag_that_sets_it():
    assert in_cli_words(
        "array 'x' has NaN or Inf values; clean them, or accept them with allow_nonfinite"
    ) == (
        "array 'x' has NaN or Inf values; clean them, or accept them with "
        "`tessera datasets push --allow-nonfinite`"
    )
    assert in_cli_words("allow_nonfinites stay") == "allow_nonfinites stay"


def test_an_rpc_named_by_its_method_path_becomes_the_command_whole():
    """PERMISSION_DENIED names the method path: the CLI showed
    "tessera.v1.Datasets/`tessera datasets push NAME FILE` needs the trainer role"."""
    assert in_cli_words(
        "tessera.v1.Datasets/UploadDataset needs the trainer role; the token 'r' has the reader role"
    ) == ("`tessera datasets push NAME FILE` needs the trainer role; the token 'r' has the reader role")
    assert in_cli_words("inference.GRPCInferenceService/ModelInfer needs the reader role") == (
        "inference.GRPCInferenceService/ModelInfer needs the reader role"
    )


def test_only_a_daemon_that_cannot_be_reached_gets_the_hint_to_start_one():
    refused = "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect"
    explained = explain_unreachable(error_for(grpc.StatusCode.UNAVAILABLE, refused), "127.0.0.1:1", False)
    assert isinstance(explained, Unavailable)
    assert explained.message.startswith("is tesserad running at 127.0.0.1:1? ")
    assert explained.message.endswith(f"; gRPC said: {refused}")
    unresolved = "errors resolving nosuch.invalid:50051: Domain name not found"
    assert unreachable_message("nosuch.invalid:50051", unresolved, False) == (
        "the host name in nosuch.invalid:50051 does not resolve: check it, or give the address tesserad "
        f"listens on as `target=`; gRPC said: {unresolved}"
    )
    # The daemon answered: it is running, so starting one is the wrong advice.
    shutting_down = error_for(grpc.StatusCode.UNAVAILABLE, "tesserad is shutting down; reconnect")
    assert explain_unreachable(shutting_down, "127.0.0.1:50051", False) is shutting_down
    not_found = error_for(grpc.StatusCode.NOT_FOUND, "failed to connect the dots")
    assert explain_unreachable(not_found, "127.0.0.1:50051", False) is not_found


def test_the_cli_names_its_flags_where_the_sdk_names_client_arguments():
    """The SDK says `target=` and `tls=` to a notebook; the CLI says the same with its flags, once."""
    refused = "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect"
    assert in_cli_words(unreachable_message("127.0.0.1:1", refused, False)) == (
        "is tesserad running at 127.0.0.1:1? Start it with `tesserad serve` (`make run` in a checkout), or "
        "give the address it listens on as --target HOST:PORT (env TESSERA_TARGET); this client sends "
        "plaintext: a daemon serving TLS needs --tls (the system's CAs) or --tls-ca FILE; gRPC said: "
        f"{refused}"
    )
    assert "a daemon serving plaintext does not answer it" in unreachable_message("h:1", refused, True)


def test_an_http_port_as_the_target_is_named_so_not_taken_for_a_daemon_to_start():
    """grpc's words for tesserad's dashboard port given as the target."""
    dashboard = (
        "connections to all backends failing; last error: INTERNAL: ipv4:127.0.0.1:8080: Failed parsing "
        "HTTP/2 (Expected SETTINGS frame as the first frame, got frame type 80) (Trying to connect an "
        "http1.x server (HTTP status 400))"
    )
    assert in_cli_words(unreachable_message("127.0.0.1:8080", dashboard, False)) == (
        "127.0.0.1:8080 answers HTTP/1.x, so it is an HTTP port (the dashboard's, /metrics or the Open "
        "Inference Protocol over HTTP), not tesserad's gRPC address (`tesserad serve --listen`, default "
        "127.0.0.1:50051): pass that as --target HOST:PORT (env TESSERA_TARGET); gRPC said: "
        f"{dashboard}"
    )


def test_tls_failures_name_the_tls_settings_in_cli_flags_not_a_daemon_to_start():
    """gRPC's words for a TLS client whose CA did not sign the daemon's certificate, and for one
    that reached a daemon serving plaintext."""
    untrusted = (
        "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
    )
    assert in_cli_words(unreachable_message("127.0.0.1:1", untrusted, True)) == (
        "the TLS handshake with 127.0.0.1:1 failed: check that the CA given as --tls-ca FILE signed the "
        "daemon's certificate, that the certificate names the host in --target HOST:PORT (env "
        "TESSERA_TARGET) (or give the name it has as --tls-server-name NAME), and, where the daemon asks "
        "for one (mutual TLS), a client certificate it trusts as --tls-cert FILE and --tls-key FILE; "
        f"gRPC said: {untrusted}"
    )
    plaintext = untrusted.replace("1000007d", "100000f7").replace(
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", "WRONG_VERSION_NUMBER"
    )
    assert unreachable_message("127.0.0.1:1", plaintext, True).startswith(
        "127.0.0.1:1 answers in plaintext, not TLS: connect to it without `tls=`"
    )


def test_a_connection_closed_after_the_tls_handshake_points_at_a_client_certificate():
    """gRPC's words for a daemon under mutual TLS refusing a client; a plaintext client to a
    TLS daemon sees the same words and keeps the advice to check the address and TLS."""
    closed = "connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
    assert in_cli_words(unreachable_message("127.0.0.1:1", closed, True)) == (
        "the daemon at 127.0.0.1:1 may require a client certificate (mutual TLS): it closed the connection "
        "after the TLS handshake, as tesserad does with a client that sends none; pass one signed by the CA "
        f"in its security.tls_client_ca_file as --tls-cert FILE and --tls-key FILE; gRPC said: {closed}"
    )
    assert unreachable_message("127.0.0.1:1", closed, True, client_cert=True).startswith(
        "the daemon at 127.0.0.1:1 may not trust this client's certificate (mutual TLS): "
    )
    assert unreachable_message("127.0.0.1:1", closed, False).startswith(
        "is tesserad running at 127.0.0.1:1? "
    )
    cut_short = closed.replace("Socket closed", "Handshake read failed (Socket closed)")
    assert unreachable_message("127.0.0.1:1", cut_short, True).startswith(
        "the TLS handshake with 127.0.0.1:1 failed: "
    )


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("see GetMetricHistory", "see `tessera runs metrics RUN_ID --history KEY`"),
        ("see ListAliasHistory", "see `tessera models aliases MODEL --history`"),
        ("wait, then Backup again", "wait, then `tessera admin backup -o FILE` again"),
    ],
)
def test_the_history_and_backup_rpcs_are_said_as_their_commands(message: str, said: str) -> None:
    assert in_cli_words(message) == said

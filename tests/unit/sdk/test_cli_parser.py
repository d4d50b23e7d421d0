"""What `tessera`'s parser refuses before anything is sent: malformed values and numbers past
their proto field exit 2 naming the flag (protobuf's own "Value out of range" names nothing);
and `--help` lists the exit statuses scripts test for."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from tessera.cli import EXIT_USAGE, main
from tessera.cli.arguments import INT32_MAX, TIMEOUT_ENV, TRANSFER_TIMEOUT_ENV
from tessera.cli.parser import build_parser
from tessera.command_parser import CommandParser
from tessera.transport import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, DEFAULT_TRANSFER_TIMEOUT_S
from tesserad.errors import InvalidArgument
from tesserad.registry.ensembles import parse_ensemble_spec


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("datasets", "push", "t", "t.npz", "--split", "train"), "--split"),
        (("datasets", "push", "t", "t.npz", "--split", "train=most"), "--split"),
        (("models", "ensemble", "e", "a:1", "b:1", "--weights", "2,x"), "--weights"),
        (("models", "show", "affine", "--version", str(2**64)), "--version"),
        (("datasets", "show", "t:x"), "NAME[:VERSION]"),
        (("jobs", "ls", "--state", "done"), "--state"),
        (("runs", "ls", "--status", "done"), "--status"),
        (("runs", "ls", "--tag", "team"), "--tag"),
        (("experiments", "update", "e", "--tag", "=x"), "--tag"),
        (("explain", "m", "--input", "x.npz", "--baseline", "nan"), "--baseline"),
        (("explain", "m", "--input", "x.npz", "--baseline=-inf"), "--baseline"),
        (("explain", "m", "--input", "x.npz", "--baseline", "1e400"), "--baseline"),
        (("explain", "m", "--input", "x.npz", "--baseline", "zero"), "--baseline"),
        (("datasets", "push", "t", "t.npz", "--split", "train=nan"), "--split"),
        (("datasets", "push", "t", "t.npz", "--split", "train=0"), "--split"),
        (("datasets", "push", "t", "t.npz", "--split", "train=1.5"), "--split"),
        (("datasets", "push", "t", "t.npz", "--split", "train=-0.5"), "--split"),
        (("models", "ensemble", "e", "a:1", "b:1", "--weights", "1,inf"), "--weights"),
    ],
)
def test_malformed_values_are_argparse_usage_errors(capsys, args, flag):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: tessera ") and f"argument {flag}: " in err, err


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("models:/clf@production", "write `clf --alias production`"),
        ("models:/clf/3", "write `clf --version 3`"),
        ("models:/clf", "write `clf`"),
        ("models:/clf/Staging", "(MLflow's stages are aliases: --alias staging)"),
        ("models:/", "write the model's name alone, and --version N or --alias NAME"),
    ],
)
def test_an_mlflow_model_uri_is_refused_saying_the_flags_that_pick_its_version(capsys, model, said):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["predict", model, "--input", "x.npz"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument model: " in err and said in err, err


def daemon_accepts_weights(weights: list[float]) -> bool:
    members = [{"model": "a", "version": 1}, {"model": "b", "version": 1}]
    spec = {"members": members, "combine": "weighted_mean", "weights": weights}
    try:
        parse_ensemble_spec(json.dumps(spec).encode())
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize(
    ("weights", "accepted"),
    [("2,1", True), ("0,1", True), ("1e-300,0", True), ("-1,2", False), ("-0.5,0.5", False), ("0,0", False)],
)
def test_ensemble_weights_are_refused_where_the_daemon_refuses_them(capsys, weights, accepted):
    assert daemon_accepts_weights([float(w) for w in weights.split(",")]) is accepted
    args = ("models", "ensemble", "e", "a:1", "b:1", "--combine", "weighted_mean", f"--weights={weights}")
    if accepted:
        assert build_parser().parse_args(args).weights == [float(w) for w in weights.split(",")]
        return
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --weights: must be finite numbers >= 0 with a positive sum" in err, err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("runs", "leaderboard", "exp", "loss", "--limit"), "--limit"),
        (("export", "onnx", "m", "--opset"), "--opset"),
        (("explain", "m", "--input", "x.npz", "--steps"), "--steps"),
        (("explain", "m", "--input", "x.npz", "--target"), "--target"),
    ],
)
def test_int32_options_past_their_field_are_refused_by_name(capsys, args, flag):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*args, "9999999999"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"argument {flag}: must be a whole number in 0..{INT32_MAX} written in digits 0-9" in err, err
    assert "out of range" not in err


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    for status in ("0", "1", "2", "3", "130", "141"):
        assert f"\n  {status} " in shown
    # Scripts reading --json need to know where a failure goes.
    assert "With --json too, a failure is text on stderr, never JSON" in " ".join(shown.split())


def test_job_states_are_taken_in_either_case():
    assert build_parser().parse_args(["jobs", "ls", "--state", "RUNNING", "--state", "queued"]).state == [
        "running",
        "queued",
    ]


def test_an_occlusion_window_past_int32_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["explain", "m", "--input", "x.npz", "--window", "1,9999999999"])
    assert exited.value.code == EXIT_USAGE
    assert (
        f"argument --window: must be sizes separated by commas, each 0..{INT32_MAX}"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "prog", "names"),
    [
        ((), "tessera", ("info", "models", "datasets", "train", "demo")),
        (("models",), "tessera models", ("ls", "show", "push", "versions", "deploy", "rollback")),
        (("runs", "artifacts"), "tessera runs artifacts", ("ls", "put", "get")),
        (("export",), "tessera export", ("onnx",)),
    ],
)
def test_a_missing_command_is_refused_naming_the_ones_there_are(capsys, args, prog, names):
    """argparse said only "the following arguments are required: SUBCOMMAND"."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    listed = err.split(f"{prog}: error: ", 1)[1]
    assert all(f" {name}," in listed or f" {name} " in listed for name in names), err
    assert " list," not in listed, err  # an alias of ls, not a command of its own
    assert f"`{prog} --help` says what each does" in listed, err


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("http://127.0.0.1:50051", "is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. 127.0.0.1:50051"),
        ("https://tessera.example.com", "is a URL; tesserad speaks gRPC"),
        ("127.0.0.1", "has no port: write HOST:PORT, e.g. 127.0.0.1:50051"),
        # A bare number is the port (`--target 50052`): it was offered back as a host, "50052:50051".
        ("50052", "'50052' has no host: write HOST:PORT, e.g. 127.0.0.1:50052"),
        # Digits of other scripts are no port: "127.0.0.1:５００５２" would be offered.
        ("５００５２", "'５００５２' has no port: write HOST:PORT, e.g. ５００５２:50051"),
        ("²", "'²' has no port"),
    ],
)
def test_a_target_that_is_a_url_or_lacks_a_port_is_refused_saying_the_form(capsys, monkeypatch, target, said):
    """An MLflow user writes the tracking URI's form (http://host:5000): gRPC then failed to
    resolve "http://127.0.0.1:50051"; without a port it dialled 443."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--target", target, "info"])
    assert exited.value.code == EXIT_USAGE
    assert said in capsys.readouterr().err
    monkeypatch.setenv("TESSERA_TARGET", target)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["info"])
    assert "TESSERA_TARGET" in capsys.readouterr().err


def test_an_empty_target_in_the_environment_is_the_default_as_an_empty_timeout_is(monkeypatch):
    """`TESSERA_TARGET= tessera info` was a usage error ("'' has no port: ... e.g. :50051"), while
    an empty TESSERA_TIMEOUT_S or TESSERA_KEEPALIVE_S reads as unset."""
    monkeypatch.setenv("TESSERA_TARGET", "")
    assert build_parser().parse_args(["info"]).target == DEFAULT_TARGET


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:50051", "[::1]:50051", "dns:///tesserad-replica.default.svc:50051", "unix:/run/t.sock"],
)
def test_grpc_targets_are_taken(target):
    assert build_parser().parse_args(["--target", target, "info"]).target == target
    assert "[--target HOST:PORT]" in build_parser().format_usage()


def test_version_prints_the_clients_version(capsys):
    """`tessera --version` was refused as a missing command; `tesserad --version` worked."""
    import tessera

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"tessera {tessera.__version__} (the daemon's: `tessera info`)\n"


def test_help_says_where_a_spec_is_described_and_what_export_alias_moves(capsys):
    # A newcomer met "JobSpec fields" with nothing naming where they are, and read `export onnx
    # --alias staging` as exporting the version staging points at.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "protos/tessera/v1/job_spec.proto" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "onnx", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "the safetensors version to export" in shown
    assert "--alias ALIAS the version this alias points at" in shown
    assert "--set-alias NAME move this alias onto the new version" in shown


@pytest.mark.parametrize(
    ("args", "dest", "value"),
    [
        (("models", "download", "m", "--version", "2", "m.onnx"), "path", "m.onnx"),
        (("runs", "artifacts", "ls", "run-1", "--json", "plots"), "path", "plots"),
        (("stats", "--version", "2", "m"), "model", "m"),
    ],
)
def test_an_optional_positional_may_follow_the_options(args, dest, value):
    """`tessera models download clips-cnn4d --version 2 out.onnx` was refused as unrecognized
    arguments: argparse fills an optional positional, empty, with the one before the options."""
    assert getattr(build_parser().parse_args(list(args)), dest) == value


def test_extra_arguments_are_refused_under_the_commands_usage(capsys):
    """They were refused under `tessera`'s own usage, which says nothing of the command's."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["models", "versions", "m", "extra"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: tessera models versions "), err
    assert "tessera models versions: error: unrecognized arguments: extra" in err, err


@pytest.mark.parametrize(
    ("command", "what"),
    [(("jobs", "watch", "job-1"), "the job's event"), (("models", "changes"), "the change")],
)
def test_from_seq_reads_the_same_in_jobs_watch_and_models_changes(capsys, command, what):
    """`jobs watch` defaulted to 1 ("every event") and `models changes` to 0 ("the first"): one
    flag of one meaning read two ways. Both feeds number from 1, and 0 starts at the first too."""
    assert build_parser().parse_args(list(command)).from_seq == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command[:2], "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert (
        f"--from-seq SEQ start at {what} of this number, the `seq` of --json's lines "
        "(default 1: the first; 0 is the first too)"
    ) in shown, shown


def test_every_option_with_a_default_says_it_in_its_help():
    """`demo --name` said only "prefix of the dataset and model names": a newcomer looking for
    the model the demo made could not tell it is demo-cnn4d."""

    def options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    yield from options(command)
            elif action.option_strings and action.help and action.default not in (None, False, "", []):
                yield parser.prog, action

    silent = [
        f"{prog} {action.option_strings[-1]}"
        for prog, action in options(build_parser())
        if action.default is not argparse.SUPPRESS and "default" not in action.help
    ]
    assert silent == []


@pytest.mark.parametrize(
    "command", [("predict", "m", "--input", "x.npz"), ("explain", "m", "--input", "x.npz")]
)
def test_predict_and_explain_take_an_alias_in_version_as_every_command_does(command):
    """`models show`, `download` and `load` took an alias in --version; `predict` and `explain`
    refused `--version staging` as not a whole number."""
    args = build_parser().parse_args([*command, "--version", "staging"])
    assert (args.version, args.alias) == ("staging", None)


# --timeout bounds a call; --transfer-timeout an upload, download or backup, which --timeout
# did not reach (the hour the SDK gives them could not be lengthened from the command line).
DEADLINES = [
    pytest.param("--timeout", TIMEOUT_ENV, "a call", DEFAULT_TIMEOUT_S, id="call"),
    pytest.param(
        "--transfer-timeout",
        TRANSFER_TIMEOUT_ENV,
        "an upload, download or backup",
        DEFAULT_TRANSFER_TIMEOUT_S,
        id="transfer",
    ),
]


@pytest.mark.parametrize(("flag", "env", "what", "default"), DEADLINES)
@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon", "2e9"])
def test_a_timeout_out_of_range_is_a_usage_error_naming_the_flag_and_the_environment(
    capsys, monkeypatch, text, flag, env, what, default
):
    """2e9 s passed the parser once and failed in the client with exit 1: gRPC's clock ends
    before it (the SDK refuses more than MAX_TIMEOUT_S). The refusal says whether the flag or
    the variable gave the value."""
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([flag, text, "info"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    # The limit written out: "1e+09" reads as a formula.
    assert f"argument {flag}: seconds {what} may take must be above 0 and at most 1,000,000,000" in err
    assert err.endswith(f"got {text!r} from {flag}\n"), err
    monkeypatch.setenv(env, text)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["info"])
    assert exited.value.code == EXIT_USAGE
    assert capsys.readouterr().err.endswith(f"got {text!r} from env {env}\n")


@pytest.mark.parametrize(("flag", "env", "what", "default"), DEADLINES)
def test_the_timeout_comes_from_the_flag_then_the_environment(monkeypatch, flag, env, what, default):
    dest = flag.removeprefix("--").replace("-", "_")
    monkeypatch.delenv(env, raising=False)
    assert getattr(build_parser().parse_args(["info"]), dest) == default
    assert getattr(build_parser().parse_args([flag, "2.5", "info"]), dest) == 2.5
    monkeypatch.setenv(env, " 90 ")
    assert getattr(build_parser().parse_args(["info"]), dest) == 90
    assert getattr(build_parser().parse_args([flag, "5", "info"]), dest) == 5
    monkeypatch.setenv(env, "")
    assert getattr(build_parser().parse_args(["info"]), dest) == default


def test_demo_refuses_json_it_would_not_print(capsys):
    """`tessera --json demo` printed its steps, progress bar and plot on stdout, where --json
    promises JSON alone; `demo --json` was listed as printing JSON. Refused before any call."""
    assert main(["--target", "127.0.0.1:1", "--json", "demo"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: tessera demo "), err
    assert "tessera demo: error: demo tells its steps for people and prints no JSON; leave out --json" in err
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["demo", "--json"])
    assert exited.value.code == EXIT_USAGE


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key"])
def test_a_client_certificate_without_its_key_is_a_usage_error_in_flag_words(capsys, tmp_path, flag):
    """It exited 1 with the SDK's words: "TLS: a client certificate needs both cert_file and key_file"."""
    pem = tmp_path / "client.pem"
    pem.write_text("")
    assert main(["--target", "127.0.0.1:1", flag, str(pem), "info"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "tessera info: error: --tls-cert and --tls-key go together" in err, err


@pytest.mark.parametrize(
    ("args", "prog", "meant"),
    [
        (("predcit", "m", "--input", "x.npz"), "tessera", "predict"),
        (("model", "ls"), "tessera", "models"),
        (("models", "verisons", "m"), "tessera models", "versions"),
        (("explain", "m", "--input", "x.npz", "--method", "salency"), "tessera explain", "saliency"),
    ],
)
def test_a_mistyped_command_or_choice_is_refused_naming_the_one_meant(capsys, args, prog, meant):
    """argparse listed every command and left the reader to spot the one a typo was for."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{prog}: error: " in err, err
    assert f"; did you mean '{meant}'? (choose from " in err, err


def test_a_command_like_none_there_is_refused_listing_them_without_a_guess(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["frobnicate"])
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate' (choose from 'info', 'models'," in err, err
    assert "did you mean" not in err, err


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("bleu", "invalid choice: 'bleu'; did you mean 'blue'? (choose from 'red', 'blue')"),
        ("green", "invalid choice: 'green' (choose from 'red', 'blue')"),
    ],
)
def test_an_invalid_choice_is_worded_alike_with_a_guess_or_without(capsys, value, refusal):
    """The words are ours on every Python: argparse's own quote the choices in some versions
    (3.11, 3.12.0-3.12.6) and not in others (3.12.7+, 3.13)."""
    parser = CommandParser(prog="paint")
    parser.add_argument("colour", choices=["red", "blue"])
    with pytest.raises(SystemExit):
        parser.parse_args([value])
    assert capsys.readouterr().err.endswith(f"paint: error: argument colour: {refusal}\n")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("predict", "m", "--input", "x.npz", "--target", "127.0.0.1:50052"), "--target"),
        (("models", "versions", "m", "--target=127.0.0.1:50052"), "--target"),
        (("sweeps", "ls", "--token", "secret"), "--token"),
        (("jobs", "ls", "--timeout", "60"), "--timeout"),
    ],
)
def test_an_option_of_tessera_itself_given_after_the_command_says_where_it_goes(capsys, args, option):
    """`tessera predict m --input x.npz --target HOST:PORT`, the order kubectl and gh take, was
    refused as "unrecognized arguments" alone, leaving the reader to find that --target is taken
    before the command only."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{option} is an option of tessera itself: give it before the command" in err, err
    assert f"`tessera {option} " in err, err
    assert "secret" not in err, err


def test_explains_target_given_the_daemons_address_says_where_the_address_goes(capsys):
    """`explain` has a --target of its own (the output index, as captum names it): an address
    there was refused as not a whole number, without a word on where the address goes."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["explain", "m", "--input", "x.npz", "--target", "127.0.0.1:50052"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "explain's --target is the output index (class) to explain" in err, err
    assert "`tessera --target HOST:PORT explain ...`" in err, err


@pytest.mark.parametrize(
    "args",
    [
        ("predict", "m", "--input", "x.npz", "-o", "out.npz"),
        ("predict", "m", "--input", "x.npz", "--output", "out.npz"),
        ("explain", "m", "--input", "x.npz", "-o", "out.npz"),
        ("explain", "m", "--input", "x.npz", "--output", "out.npz"),
        ("explain", "m", "--input", "x.npz", "--out", "out.npz"),
    ],
)
def test_predict_and_explain_name_their_output_file_as_the_other_commands_do(args):
    """explain took --out where predict took --output, and neither -o, which `datasets download`,
    `runs artifacts get` and `admin backup` take."""
    assert build_parser().parse_args(list(args)).output == "out.npz"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        # MLflow's `mlflow models serve`, and the daemon's own `tesserad serve`: "did you mean 'sweep'?".
        (
            ("serve",),
            "invalid choice: 'serve'; `tesserad serve` starts the daemon, `tessera load MODEL` serves",
        ),
        # The model before its format: "invalid choice: 'clips' (choose from 'onnx')".
        (("export", "clips"), "invalid choice: 'clips'; the format comes first, `tessera export onnx clips`"),
    ],
)
def test_a_command_a_newcomer_reaches_for_first_says_which_one_does_it(capsys, args, said):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err, err
    assert "did you mean" not in err, err


def test_a_mistyped_format_is_still_answered_with_the_one_meant(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "onnnx", "clips"])
    err = capsys.readouterr().err
    assert "invalid choice: 'onnnx'; did you mean 'onnx'?" in err, err


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("models", "alias", "clf", "prod", "--token", "S3CRET"), "models alias"),
        (("models", "alias", "clf", "prod", "--token=S3CRET"), "models alias"),
        (("models", "deploy", "clf", "--token", "S3CRET"), "models deploy"),
        (("models", "ensemble", "x", "--token", "S3CRET"), "models ensemble"),
        (("models", "--token", "S3CRET", "ls"), "models"),
        (("export", "--token", "S3CRET", "onnx", "m"), "export"),
    ],
)
def test_a_token_given_after_the_command_is_not_echoed_whatever_else_is_wrong(capsys, args, command):
    """The value of a misplaced --token was checked as the positional it took the place of, or
    as a command word, and echoed ("got 'S3CRET'", "invalid choice: 'S3CRET'") before the
    misplaced option was seen."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--token is an option of tessera itself: give it before the command" in err, err
    assert f"`tessera --token TOKEN {command} ...`" in err, err
    assert "S3CRET" not in err, err


def test_an_option_word_after_double_dash_is_not_taken_for_an_option_of_tessera(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["predict", "m", "--input", "x.npz", "--", "--token"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "option of tessera itself" not in err, err


def test_a_format_export_does_not_have_is_not_taken_for_a_model_named_so(capsys):
    """`tessera export torchscript clips` was told "the format comes first, `tessera export onnx
    torchscript`": to export a model named torchscript."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["export", "torchscript", "clips"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'torchscript'; onnx is the only format, `tessera export onnx MODEL`" in err, err
    assert "export onnx torchscript" not in err, err


@pytest.mark.parametrize(
    "args",
    [
        ("export", "mymodel", "--version", "2"),
        ("export", "mymodel", "--version=2"),
        ("export", "mymodel", "--json"),
        ("export", "mymodel", "--vers", "2", "--json"),
        ("export", "mymodel", "--token", "S3CRET"),
    ],
)
def test_a_model_before_its_format_followed_by_options_only_is_told_the_format_comes_first(capsys, args):
    """The options after the model were counted as a word following it, and the reader was told
    "onnx is the only format, `tessera export onnx MODEL`"."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'mymodel'; the format comes first, `tessera export onnx mymodel`" in err, err


def test_a_format_export_does_not_have_followed_by_a_model_and_options_says_onnx_is_the_only_one(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "torchscript", "--version", "2", "clips"])
    err = capsys.readouterr().err
    assert "invalid choice: 'torchscript'; onnx is the only format, `tessera export onnx MODEL`" in err, err


@pytest.mark.parametrize(
    ("args", "option", "command"),
    [
        (("models", "ls", "--tok", "S3CRET"), "--token", "models ls"),
        (("models", "ls", "--tok=S3CRET"), "--token", "models ls"),
        (("models", "alias", "m", "--tok", "S3CRET", "3"), "--token", "models alias"),
        (("predict", "m", "--input", "x.npz", "--targ", "S3CRET"), "--target", "predict"),
    ],
)
def test_an_abbreviated_option_of_tessera_after_the_command_is_refused_without_its_value(
    capsys, args, option, command
):
    """The root parser takes `--tok` for --token before the command; after it, `--tok S3CRET` was
    refused as "unrecognized arguments: --tok S3CRET", or its value taken for the alias."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{option} is an option of tessera itself: give it before the command" in err, err
    assert f"{command} ...`" in err, err
    assert "S3CRET" not in err, err


def test_an_ambiguous_abbreviation_of_tessera_options_after_the_command_is_refused_without_its_value(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["models", "ls", "--t", "S3CRET"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--target" in err and "--token" in err, err
    assert "S3CRET" not in err, err


def test_an_abbreviation_of_a_commands_own_option_is_its_own(capsys):
    """`--vers` is `export onnx`'s --version, though it abbreviates no option of tessera's own."""
    assert build_parser().parse_args(["export", "onnx", "m", "--vers", "2"]).version == 2

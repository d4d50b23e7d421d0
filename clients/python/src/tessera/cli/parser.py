"""The `tessera` command line: every command, its arguments and its --help."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Callable

from tessera import __version__
from tessera.cli import EXIT_STATUS_HELP
from tessera.cli.arguments import (
    INT32_MAX,
    TIMEOUT_ENV,
    TRANSFER_TIMEOUT_ENV,
    add_other_spelling,
    add_set_alias_flag,
    add_version_flags,
    daemon_target,
    dataset,
    env_default,
    finite,
    keepalive_seconds,
    key_value,
    member,
    metric_condition,
    model_name,
    output_index,
    pointed_version,
    route,
    serving_option,
    spec_setting,
    split,
    timeout_seconds,
    transfer_timeout_seconds,
    version_number,
    version_or_alias,
    weight_list,
    whole,
    window_sizes,
)
from tessera.cli.datasets import (
    cmd_datasets_download,
    cmd_datasets_ls,
    cmd_datasets_push,
    cmd_datasets_rm,
    cmd_datasets_show,
    cmd_datasets_versions,
)
from tessera.cli.jobs import (
    cmd_jobs_cancel,
    cmd_jobs_ls,
    cmd_jobs_register,
    cmd_jobs_show,
    cmd_jobs_watch,
    cmd_train,
)
from tessera.cli.models import (
    cmd_export_onnx,
    cmd_models_alias,
    cmd_models_aliases,
    cmd_models_changes,
    cmd_models_compare,
    cmd_models_deploy,
    cmd_models_deployments,
    cmd_models_download,
    cmd_models_ensemble,
    cmd_models_ls,
    cmd_models_push,
    cmd_models_rm,
    cmd_models_rollback,
    cmd_models_show,
    cmd_models_unalias,
    cmd_models_versions,
)
from tessera.cli.serving import cmd_explain, cmd_load, cmd_predict, cmd_serve_status, cmd_stats, cmd_unload
from tessera.cli.system import cmd_admin_backup, cmd_admin_verify, cmd_demo, cmd_info
from tessera.cli.tracking import (
    VIEWS,
    cmd_experiments_ls,
    cmd_experiments_restore,
    cmd_experiments_rm,
    cmd_experiments_show,
    cmd_experiments_update,
    cmd_runs_artifacts_get,
    cmd_runs_artifacts_ls,
    cmd_runs_artifacts_put,
    cmd_runs_compare,
    cmd_runs_leaderboard,
    cmd_runs_ls,
    cmd_runs_metrics,
    cmd_runs_restore,
    cmd_runs_rm,
    cmd_runs_show,
)
from tessera.command_parser import CommandParser
from tessera.ensembles import COMBINES
from tessera.events import JobState
from tessera.explanations import METHODS, SHORT_NAMES
from tessera.models import FORMAT_BY_SUFFIX
from tessera.state_words import enum_word
from tessera.sweep_commands import add_sweep_commands
from tessera.transport import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    KEEPALIVE_ENV,
    KEEPALIVE_TIMEOUT_S,
    MODEL_CALL_TIMEOUT_S,
    TARGET_ENV,
    TLS_CA_ENV,
    TOKEN_ENV,
    UNLOAD_TIMEOUT_S,
)
from tessera.v1 import training_pb2

JSON_HELP = "print JSON for scripts instead of tables"
# Columns of the text laid out by hand (argparse fits the rest to the terminal).
HELP_WIDTH = 80

# The first screen of `tessera --help`, before the list of commands: where a newcomer starts.
DESCRIPTION = f"""\
Talk to a running tesserad: its model registry, datasets, training jobs, sweeps,
experiment runs and serving. `tessera COMMAND --help` says more about each.

start here:
  tessera demo    the whole life cycle on a synthetic dataset, told step by step

the life cycle by hand, in order (the README walks through it):
  tessera datasets push NAME FILE.npz    upload the data
  tessera train SPEC.toml --follow       train; [register_as] adds a version
  tessera models versions MODEL          list the model's versions
  tessera export onnx MODEL              add an ONNX version, checked vs torch
  tessera load MODEL                     serve a version (predict loads one too)
  tessera predict MODEL --input X.npz    run the model on inputs
  tessera stats MODEL                    its latency percentiles and throughput
  tessera models deploy MODEL 2=90 1=10  split traffic among versions

environment (a flag given wins):
  {TARGET_ENV}              --target: the daemon's HOST:PORT
  {TOKEN_ENV}               --token: the bearer token
  {TLS_CA_ENV}              --tls-ca: the CA file of the daemon's certificate
  {TIMEOUT_ENV}           --timeout: seconds a call may take
  {TRANSFER_TIMEOUT_ENV}  --transfer-timeout: seconds a transfer may take
  {KEEPALIVE_ENV}         --keepalive: seconds of silence before a ping"""


def group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str,
    examples: list[tuple[str, str]],
    *,
    dest: str = "subcommand",
    metavar: str = "SUBCOMMAND",
    other_choice_hint: str = "",
    followed_choice_hint: str = "",
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A group of commands (`tessera models ...`): `help` is its line in the list of commands,
    `description` says what it manages, and `examples` (what it does, the command line) show its
    common commands under its --help, as kubectl's groups do. `other_choice_hint` and
    `followed_choice_hint`: what a word that is none of its commands is told, as the last word
    or with others after it (`CommandParser.other_choice_hint`)."""
    shown = "\n".join(f"  # {what}\n  {line}" for what, line in examples)
    parser = commands.add_parser(
        name,
        help=help,
        # Filled here: the raw formatter that keeps the examples' lines leaves it as given.
        description=textwrap.fill(description, HELP_WIDTH),
        epilog=f"examples:\n{shown}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hinted = parser  # narrowed apart: `parser` keeps argparse's type, as its subparsers must
    assert isinstance(hinted, CommandParser)  # add_subparsers makes its commands' parsers of its own class
    hinted.other_choice_hint = other_choice_hint
    hinted.followed_choice_hint = followed_choice_hint
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar)


def add_view(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument(
        "--view",
        choices=list(VIEWS),
        default="active",
        help=f"active {what} (default), deleted ones only, or all",
    )


MODEL_HELP = "the model's name (`tessera models ls` lists them)"
DATASET_HELP = "NAME:VERSION, or NAME for its newest version"
EXPECTED_REVISION_HELP = (
    "only if the model's newest deployment revision is this one (0: never deployed; `tessera models "
    "deployments MODEL` lists them), so that a deploy or rollback made meanwhile is not undone"
)
JOB_HELP = "the job's id (`tessera jobs ls` lists them)"
# A job's events and the registry's changes are numbered from 1; their RPCs read 0 as 1 too.
FROM_SEQ_DEFAULT = "(default 1: the first; 0 is the first too)"
RUN_HELP = "the run's id (`tessera runs ls` lists them)"
EXPERIMENT_HELP = "the experiment's name (`tessera experiments ls` lists them)"
RESUME_HELP = (
    "go on from the bytes that a download to the same file kept when it gave up reconnecting or ran "
    "out of time, or, run with --resume, ended any other way (Ctrl-C, SIGTERM, a refusal, a full disk) "
    "but in a file whose sha256 was wrong (a hidden .partial file beside it; a download without "
    "--resume that ends so removes it), where they are of the same "
    "file (sha256); refused (exit 1) where they are of another, which are then left as they are. "
    "Without it a download starts from the first byte"
)


def build_parser() -> argparse.ArgumentParser:
    root = CommandParser(
        prog="tessera",
        description=DESCRIPTION,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # argparse's type, so that its subparsers are the type `group` and `command` take.
    parser: argparse.ArgumentParser = root
    parser.add_argument(
        "--version", action="version", version=f"tessera {__version__} (the daemon's: `tessera info`)"
    )
    parser.add_argument(
        "--target",
        type=daemon_target,
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the daemon's gRPC address (env {TARGET_ENV}; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token, where the daemon checks tokens (env {TOKEN_ENV}; default none)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get(TLS_CA_ENV) or None,
        metavar="FILE",
        help=f"CA certificate that signed the daemon's (implies TLS; env {TLS_CA_ENV})",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="client private key for mutual TLS")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to check the daemon's certificate against"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=env_default(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"seconds a call may take before it fails with DEADLINE_EXCEEDED (env {TIMEOUT_ENV}; default "
        f"{DEFAULT_TIMEOUT_S:g}); load, export and explain get at least {MODEL_CALL_TIMEOUT_S:g} s, unload "
        f"{UNLOAD_TIMEOUT_S:g} s, the calls around following a job or sweep (jobs watch; train, sweep "
        f"and sweeps show --follow) at least {DEFAULT_TIMEOUT_S:g} s, uploads, downloads and backups "
        "--transfer-timeout, and watching or following itself has no limit",
    )
    parser.add_argument(
        "--transfer-timeout",
        type=transfer_timeout_seconds,
        default=env_default(TRANSFER_TIMEOUT_ENV) or DEFAULT_TRANSFER_TIMEOUT_S,
        metavar="SECONDS",
        help="seconds an upload, download or backup (models and datasets push and download, runs "
        "artifacts put and get, admin backup and verify) may take before it fails with DEADLINE_EXCEEDED; "
        f"lengthen it for a large file over a slow link (env {TRANSFER_TIMEOUT_ENV}; default "
        f"{DEFAULT_TRANSFER_TIMEOUT_S:g}: an hour)",
    )
    parser.add_argument(
        "--keepalive",
        type=keepalive_seconds,
        default=env_default(KEEPALIVE_ENV),
        metavar="SECONDS",
        help=f"ping the daemon after this many seconds of silence during a call, and give the connection "
        f"up when a ping goes unanswered for {KEEPALIVE_TIMEOUT_S:g} s (or as long, when shorter), so that "
        f"a watch over a connection lost without a word (a NAT or VPN that forgot it) connects again; 0: no "
        f"pings, for a proxy that limits them (env {KEEPALIVE_ENV}; default {DEFAULT_KEEPALIVE_S:g})",
    )
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    root.choice_hints["serve"] = (
        "`tesserad serve` starts the daemon, `tessera load MODEL` serves a version of a model"
    )

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[..., None],
        help: str,
        *,
        prints_json: bool = True,
    ) -> argparse.ArgumentParser:
        """A command; `prints_json` False for one whose output is for people alone (it refuses
        a --json given before it)."""
        # Every `ls` also answers to `list`, as `tessera sweeps` does.
        aliases = ["list"] if name == "ls" else []
        sub = group.add_parser(name, aliases=aliases, help=help, description=help)
        sub.set_defaults(handler=handler, parser=sub)
        if prints_json:
            # Scripts often put flags last; SUPPRESS keeps a --json given before the command.
            sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
        return sub

    command(
        commands, "info", cmd_info, "show the daemon's version, devices, data directory and replication role"
    )

    models = group(
        commands,
        "models",
        "the model registry: versions, aliases, deployments",
        "The model registry: each model's numbered versions (ONNX, safetensors weights with their "
        "architecture, ensembles), the aliases that name them, and the deployment that routes "
        "requests among them. A training job with register_as adds a version too.",
        [
            ("list the models", "tessera models ls"),
            ("a model's versions, newest first", "tessera models versions clips-cnn4d"),
            ("register an ONNX file as the next version", "tessera models push clips-cnn4d model.onnx"),
            ("point the alias production at version 2", "tessera models alias clips-cnn4d production 2"),
            ("canary: 90% of requests to v2, 10% to v1", "tessera models deploy clips-cnn4d 2=90 1=10"),
            ("undo the last deploy", "tessera models rollback clips-cnn4d"),
            ("write version 2's artifact to a file", "tessera models download clips-cnn4d --version 2"),
        ],
    )
    command(
        models,
        "ls",
        cmd_models_ls,
        "list the models, by name; updated: the model's last change (a version registered or deleted, "
        "an alias moved, a deploy or rollback, an edit)",
    ).add_argument("--prefix", default="", help="only models whose name starts with this")
    sub = command(models, "show", cmd_models_show, "show a model version's details")
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    add_version_flags(sub, "default: latest")
    sub = command(
        models, "push", cmd_models_push, "register an ONNX file, or safetensors weights with --spec"
    )
    sub.add_argument("model", help="the model to add a version to (made with its first version)")
    sub.add_argument(
        "file",
        help="model.onnx or weights.safetensors, or a run's artifact as runs:/RUN_ID/PATH (MLflow's form)",
    )
    sub.add_argument(
        "--format",
        choices=sorted(set(FORMAT_BY_SUFFIX.values())),
        help="default: from the file's suffix",
    )
    sub.add_argument("--spec", help="TOML with the [architecture] that built safetensors weights")
    add_set_alias_flag(sub, refuse_alias=True)
    sub.add_argument("--description", default="", help="free text stored with the version")
    sub.add_argument(
        "--run",
        metavar="RUN_ID",
        help="the tracked run the file came from, kept in the version's lineage (checked: it must exist)",
    )
    command(models, "versions", cmd_models_versions, "list a model's versions, newest first").add_argument(
        "model", help=MODEL_HELP
    )
    sub = command(
        models,
        "ensemble",
        cmd_models_ensemble,
        "register an ensemble of versions (MEMBER is MODEL:VERSION) as the model's next version",
    )
    sub.add_argument("model", help="the model the ensemble is the next version of (made with it)")
    sub.add_argument(
        "members",
        nargs="+",
        type=member,
        metavar="MEMBER",
        help="a member version, MODEL:VERSION (its number), e.g. clf:3",
    )
    sub.add_argument(
        "--combine",
        choices=COMBINES,
        default="mean",
        help="mean of the outputs (default); vote: each member's top class is a vote; weighted_mean "
        "(--weights); stacking: a linear combiner fitted with --fit",
    )
    sub.add_argument(
        "--weights",
        type=weight_list,
        help="weighted_mean: one weight per member, finite and >= 0 with a positive sum, e.g. 2,1,1 or 1,0",
    )
    sub.add_argument(
        "--fit",
        metavar="FILE.npz",
        help="stacking: held-out inputs (by name) and targets; each member predicts them, and the "
        "combiner is fitted by least squares",
    )
    sub.add_argument(
        "--fit-target", default="y", metavar="NAME", help="the targets' array in --fit (default y)"
    )
    add_set_alias_flag(sub, refuse_alias=True)
    sub.add_argument("--description", default="", help="free text stored with the version")
    sub = command(models, "alias", cmd_models_alias, "point an alias at a version")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("alias", help="the alias's name, e.g. production (latest is kept by the daemon)")
    sub.add_argument(
        "version",
        type=pointed_version,
        help="the version number it points at (from 1; v6 as the tables show it is 6); an alias "
        "points at a number, not at another alias",
    )
    sub = command(
        models,
        "aliases",
        cmd_models_aliases,
        "list a model's aliases by name, latest last (at most 1,000 a model); with --history, every move",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("alias", nargs="?", default="", help="with --history: only this alias's moves")
    sub.add_argument(
        "--history",
        action="store_true",
        help="list each move of the aliases (from, to, when, by), newest first: which version an alias "
        "named when a past deployment revision was made (a revision records the alias, not its version)",
    )
    sub = command(
        models,
        "unalias",
        cmd_models_unalias,
        "delete an alias (refused while the deployment routes through it)",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("alias", help="the alias's name")
    sub = command(
        models,
        "rm",
        cmd_models_rm,
        "delete a version, or with no version the model and every version; refused while an alias, the "
        "deployment, an ensemble or an unfinished fine-tuning job uses one",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "version",
        nargs="?",
        type=version_number,
        help="the version to delete (its number, from 1); leave out for the model",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="delete the model even where aliases or a deployment point into it (they go with it)",
    )
    sub = command(
        models, "deploy", cmd_models_deploy, "route traffic: ROUTE is VERSION=PERCENT or ALIAS=PERCENT"
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "routes",
        nargs="+",
        type=route,
        metavar="ROUTE",
        help="VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10",
    )
    sub.add_argument("--shadow", type=version_or_alias, help="version or alias that gets a copy of requests")
    sub.add_argument(
        "--shadow-percent",
        type=whole(1, 100),
        default=100,
        help="percent of the requests other versions answer that are copied to --shadow (default 100)",
    )
    sub.add_argument("--comment", default="", help="free text stored with the deployment's revision")
    sub.add_argument("--expected-revision", type=whole(), help=EXPECTED_REVISION_HELP)
    sub = command(
        models,
        "rollback",
        cmd_models_rollback,
        "restore the previous deployment (none before the first: requests then go to the latest version)",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("--expected-revision", type=whole(), help=EXPECTED_REVISION_HELP)
    sub = command(
        models,
        "deployments",
        cmd_models_deployments,
        "list the deployment history, newest first (the first is the current deployment)",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub = command(models, "compare", cmd_models_compare, "show the differences between two versions")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("a", type=version_or_alias, help="version number or alias")
    sub.add_argument("b", type=version_or_alias, help="version number or alias")
    sub = command(
        models,
        "changes",
        cmd_models_changes,
        "list the registry's changes, numbered in commit order, with each model's serving state after "
        "it (before the daemon's newest replica.change_history, only each model's newest is kept); "
        "--json's versions carry what serving needs (format, signature, architecture, sha256, size), "
        "`models show` the rest",
    )
    sub.add_argument(
        "--from-seq",
        type=whole(),
        default=1,
        metavar="SEQ",
        help=f"start at the change of this number, the `seq` of --json's lines {FROM_SEQ_DEFAULT}",
    )
    sub.add_argument(
        "--follow", action="store_true", help="go on printing new changes as they come (Ctrl-C to stop)"
    )
    sub = command(
        models,
        "download",
        cmd_models_download,
        "write a version's artifact to a file (verified); a broken connection or a daemon restart is "
        "reconnected and goes on from the bytes written",
    )
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    sub.add_argument(
        "path",
        nargs="?",
        help="file to write, or a directory to write it into: one there, or a name ending in / (made "
        "where missing); default ./MODEL-vVERSION.onnx, .safetensors or .json, by the artifact's "
        "format. A suffix of another format is refused, "
        "and so is a number that names nothing there yet without --version (for version N, --version N)",
    )
    sub.add_argument("-o", "--output", metavar="PATH", help="the same as PATH, as datasets download takes it")
    add_version_flags(sub, "default: latest")
    sub.add_argument(
        "--force", action="store_true", help="replace the file if it exists (else refused, exit 2)"
    )
    sub.add_argument("--resume", action="store_true", help=RESUME_HELP)

    datasets = group(
        commands,
        "datasets",
        "datasets: versioned arrays that jobs train on",
        "Datasets: versioned .npz or .npy arrays with their train/val splits, which training jobs "
        "read (a spec's [data] dataset = NAME). Pushing the same file, splits and tags again stores nothing new.",
        [
            (
                "upload clips.npz as dataset clips, split 80/20",
                "tessera datasets push clips clips.npz --split train=0.8 --split val=0.2",
            ),
            ("list the datasets", "tessera datasets ls"),
            ("arrays, statistics and splits of the newest version", "tessera datasets show clips"),
            ("write version 1's file", "tessera datasets download clips:1 -o clips.npz"),
        ],
    )
    sub = command(
        datasets,
        "push",
        cmd_datasets_push,
        "upload a .npz or .npy file, or several .npy files joined (x.npy y.npy), as a new version",
    )
    sub.add_argument("name", help="the dataset's name (a new version of it when it exists)")
    sub.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=".npz (its arrays by name) or .npy (one array, see --array-name); several .npy files, "
        "x.npy y.npy, are joined into one version, each array named by its file's stem (x, y), as a "
        "job's input_array and target_array name them",
    )
    sub.add_argument(
        "--array",
        action="append",
        type=key_value,
        default=[],
        metavar="NAME=FILE",
        help="a .npy file joined into the version as array NAME (repeatable): --array x=st_x.npy "
        "--array y=st_y.npy",
    )
    sub.add_argument(
        "--as-is",
        action="store_true",
        help="join several .npy files as arrays named by their stems even where they look like one "
        "file per sample (a numbered series, or all of one shape with none named x or y), which is "
        "refused without it",
    )
    sub.add_argument(
        "--split",
        action="append",
        type=split,
        default=[],
        metavar="NAME=FRACTION",
        help="once per split, the fractions summing to 1: --split train=0.8 --split val=0.2",
    )
    sub.add_argument(
        "--seed", type=whole(), help="seed of the random split that --split asks for (default 0)"
    )
    sub.add_argument("--allow-nonfinite", action="store_true", help="accept NaN and Inf")
    sub.add_argument(
        "--array-name",
        default="",
        metavar="NAME",
        help="for a .npy file: the name its array gets, as a job's spec names it (default x); refused "
        "for a .npz, which names its arrays itself",
    )
    sub.add_argument("--description", default="", help="free text stored with the version")
    sub.add_argument(
        "--tag",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="a tag stored with the version (repeatable); a re-push with other tags is a new version",
    )
    command(datasets, "ls", cmd_datasets_ls, "list the datasets, by name").add_argument(
        "--prefix", default="", help="only datasets whose name starts with this"
    )
    command(
        datasets, "versions", cmd_datasets_versions, "list a dataset's versions, newest first"
    ).add_argument("name", help="the dataset's name (`tessera datasets ls` lists them)")
    command(
        datasets,
        "show",
        cmd_datasets_show,
        "show the arrays, statistics and splits of NAME[:VERSION], its file's size and sha256, and who pushed it",
    ).add_argument("ref", type=dataset, metavar="NAME[:VERSION]", help=DATASET_HELP)
    sub = command(
        datasets,
        "rm",
        cmd_datasets_rm,
        "delete version VERSION of NAME, or with NAME alone the dataset and every version; refused "
        "while a queued or running job, a running sweep or a model version's lineage uses it",
    )
    sub.add_argument(
        "ref",
        type=dataset,
        metavar="NAME[:VERSION]",
        help="NAME:VERSION for one version, NAME for every version",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="delete even what a job, a sweep or a model version's lineage uses (a job still running may "
        "then fail)",
    )
    sub = command(
        datasets,
        "download",
        cmd_datasets_download,
        "write the stored .npz/.npy file of NAME[:VERSION] (default the newest), verified against its sha256; "
        "a broken connection or a daemon restart is reconnected and goes on from the bytes written",
    )
    sub.add_argument("ref", type=dataset, metavar="NAME[:VERSION]", help=DATASET_HELP)
    sub.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="file to write, or a directory to write it into: one there, or a name ending in / (made "
        "where missing); default ./NAME-vVERSION.npz or .npy",
    )
    sub.add_argument(
        "--force", action="store_true", help="replace the file if it exists (else refused, exit 2)"
    )
    sub.add_argument(
        "--resume",
        action="store_true",
        help=f"{RESUME_HELP}. To the default file name, it notes the partial downloads kept for other "
        "versions' default names (NAME-vN), and how to go on with or remove each",
    )

    sub = command(commands, "train", cmd_train, "submit a training job from a TOML spec")
    sub.add_argument(
        "spec",
        help="SPEC.toml: a JobSpec in TOML, enum values by their short names (its fields: "
        "protos/tessera/v1/job_spec.proto; an example: the README's spec.toml); - reads it from stdin",
    )
    sub.add_argument("--follow", action="store_true", help="show live progress until the job ends")
    sub.add_argument(
        "--run-name",
        metavar="NAME",
        help="name the job's run NAME, in place of the spec's run_name (a name is taken once per "
        "experiment; without one the run is named after its job)",
    )
    sub.add_argument(
        "--resume-from",
        metavar="JOB_ID",
        help="go on from the newest checkpoint that job kept (a job that ended: cancelled, failed "
        "or succeeded; `tessera jobs show JOB_ID` lists them) as if it had not stopped: its weights, "
        "optimizer state, step and epoch counts carry over, and the run's curve starts with that "
        "job's points; epochs counts from that job's start (epochs=10 from its epoch 4 checkpoint "
        "trains epochs 5 to 10). The architecture, optimizer.name, the schedule's kind, batch_size, "
        "devices and the training split's size must be that job's (spec: resume_from)",
    )
    sub.add_argument(
        "--resume-weights-only",
        action="store_true",
        help="with --resume-from: take that checkpoint's model weights alone, as a fine-tuning start; "
        "the optimizer, schedule, epoch count and curve start afresh and only the architecture must "
        "match (spec: resume_weights_only = true)",
    )
    sub.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=spec_setting,
        metavar="KEY=VALUE",
        help="set one field of the spec over the file's (repeatable): KEY its names joined by dots, "
        "VALUE a TOML value or plain text, e.g. --set epochs=50 --set optimizer.lr=3e-4 "
        "--set optimizer.name=adamw --set 'architecture.mlp.hidden_sizes=[64, 64]'",
    )

    jobs = group(
        commands,
        "jobs",
        "training jobs: list, show, watch, cancel, register",
        "Training jobs, each started by `tessera train SPEC.toml` or by a sweep's trial: their "
        "state, live progress, metrics and checkpoints.",
        [
            ("start a job and watch it to the end", "tessera train spec.toml --follow"),
            ("the jobs running now", "tessera jobs ls --state running"),
            ("follow a job's progress", "tessera jobs watch JOB_ID"),
            ("a job's state, metrics and checkpoints", "tessera jobs show JOB_ID"),
            ("its spec, as TOML to train again", "tessera jobs show JOB_ID --spec"),
            ("stop it", "tessera jobs cancel JOB_ID"),
            ("register a succeeded job's weights", "tessera jobs register JOB_ID MODEL --set-alias staging"),
        ],
    )
    sub = command(
        jobs,
        "ls",
        cmd_jobs_ls,
        "list jobs, newest first: state, progress, train_loss, whether early stopping ended each",
    )
    sub.add_argument("--experiment", default="", help="only this experiment's jobs (default: every job)")
    sub.add_argument(
        "--sweep", default="", metavar="SWEEP_ID", help="only this sweep's trials' jobs (default: every job)"
    )
    add_other_spelling(
        sub,
        sub.add_argument(
            "--state",
            action="append",
            type=str.lower,
            choices=[state.value for state in JobState if state != JobState.UNSPECIFIED],
            # The choices in the usage line ran it past 80 columns; the help lists them.
            metavar="STATE",
            help="only jobs in this state (repeatable; --status too, as runs ls says it): %(choices)s",
        ),
        "--status",
    )
    sub = command(jobs, "show", cmd_jobs_show, "show a job's state, metrics and kept checkpoints")
    sub.add_argument("job_id", help=JOB_HELP)
    sub.add_argument(
        "--spec",
        action="store_true",
        help="print the job's spec instead, as TOML that `tessera train` takes as it is (its run_name "
        "left out: the job's run has that name; --run-name names the new one)",
    )
    sub = command(jobs, "watch", cmd_jobs_watch, "follow a job's progress until it ends")
    sub.add_argument("job_id", help=JOB_HELP)
    sub.add_argument(
        "--from-seq",
        type=whole(),
        default=1,
        metavar="SEQ",
        help=f"start at the job's event of this number, the `seq` of --json's lines {FROM_SEQ_DEFAULT}",
    )
    command(jobs, "cancel", cmd_jobs_cancel, "stop a queued or running job").add_argument(
        "job_id", help=JOB_HELP
    )
    sub = command(
        jobs,
        "register",
        cmd_jobs_register,
        "register a succeeded job's weights as MODEL's next version, as [register_as] would have",
    )
    sub.description = (
        f"{sub.description}: for a job trained without [register_as], or its weights under another "
        "model. The weights are its final checkpoint's; the version's lineage names the job, its run "
        "and its dataset version, as register_as's does. Once per job and model: where MODEL holds "
        "the job's version already, that version is named and none is added (--set-alias then moves "
        "onto it). A job that did not succeed (a cancelled one too), or whose final checkpoint its "
        "retention released, is refused, and nothing is registered."
    )
    sub.add_argument("job_id", help=JOB_HELP)
    sub.add_argument("model", help="the model to add the version to (made with its first version)")
    add_set_alias_flag(sub, refuse_alias=True)
    sub.add_argument("--description", default="", help="free text stored with the version")

    add_sweep_commands(commands, command, group)

    runs = group(
        commands,
        "runs",
        "experiment runs: search, rank, artifacts",
        "Experiment runs, as MLflow's: each training job records one, with its spec's fields as "
        "params, its metrics and files kept with it (artifacts). Search and rank them; a deleted "
        "run is kept until restored.",
        [
            (
                "an experiment's runs, best val_loss first",
                "tessera runs ls --experiment clips --order-by val_loss",
            ),
            ("a run's params and metrics", "tessera runs show RUN_ID"),
            ("an experiment's ten best runs by a metric", "tessera runs leaderboard clips val_loss"),
            ("the files kept with a run", "tessera runs artifacts ls RUN_ID"),
        ],
    )
    sub = command(runs, "ls", cmd_runs_ls, "list runs, newest first")
    sub.add_argument("--experiment", default="", help="only this experiment's runs (default: every run)")
    add_other_spelling(
        sub,
        sub.add_argument(
            "--status",
            action="append",
            type=str.lower,
            choices=[
                enum_word(training_pb2.RunStatus.DESCRIPTOR, value.name)
                for value in training_pb2.RunStatus.DESCRIPTOR.values
                if value.number
            ],
            metavar="STATUS",
            help="only runs with this status (repeatable; --state too, as jobs ls says it): %(choices)s",
        ),
        "--state",
    )
    sub.add_argument(
        "--sweep",
        default="",
        metavar="SWEEP_ID",
        help="only the runs of this sweep's trials (looked up with the sweep and picked here: the "
        "daemon filters runs by no sweep)",
    )
    sub.add_argument(
        "--param",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="only runs with this param (repeatable); a job's run has its spec's fields by path, "
        "e.g. optimizer.lr=0.001 (numbers compare as numbers: 3e-3 matches too; true and false in "
        "any case)",
    )
    sub.add_argument(
        "--tag",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="only runs with this tag (repeatable)",
    )
    sub.add_argument(
        "--metric",
        action="append",
        type=metric_condition,
        metavar="KEY<VALUE",
        help="only runs whose metric's last value compares so: <, <=, >, >=, = or != (repeatable; quote "
        "it for the shell, e.g. 'val_acc>0.9')",
    )
    sub.add_argument(
        "--filter",
        default="",
        metavar="FILTER",
        help="MLflow's search filter, conditions joined by AND: metrics.KEY OP NUMBER (OP <, <=, >, >=, = "
        "or !=; metrics.KEY.min or .max for that value of the summary), params.KEY and tags.KEY "
        "= 'VALUE' (or !=, LIKE 'res%%', ILIKE, IN ('a', 'b'), NOT IN (...)), attributes.run_name, "
        "run_id and parent_run_id as text, attributes.start_time and end_time OP MILLISECONDS, "
        "attributes.status = 'STATUS' (or !=, IN (...), NOT IN (...)); backquote "
        "a key of other characters than letters, digits and _, e.g. metrics.`val-loss`, and a metric's "
        "with dots: MLflow's metrics.val.min, the metric named val.min, is metrics.`val.min` (a param's "
        "or tag's may hold dots: params.optimizer.lr = '0.001'); a param and a value that are both "
        "numbers compare as numbers ('3e-3' matches 0.003), true and false in any case",
    )
    sub.add_argument(
        "--order-by",
        metavar="ORDER",
        help="order by a metric: METRIC or MLflow's 'metrics.METRIC [ASC|DESC]' (metrics.METRIC.min or "
        ".max for that value of its summary, else the last); METRIC alone sorts lowest first for a "
        "name with loss, error, mae, mse or mape in it, else highest first; a key without ASC or DESC "
        "sorts lowest first, as MLflow's (runs without it last); several keys apart by commas, each "
        "metrics.KEY, params.KEY, start_time, end_time, run_name or status, decide in turn, e.g. "
        "'metrics.val_loss ASC, start_time DESC' (equal runs by run id)",
    )
    direction = sub.add_mutually_exclusive_group()
    direction.add_argument(
        "--asc", dest="descending", action="store_false", default=None, help="--order-by: lowest first"
    )
    direction.add_argument("--desc", dest="descending", action="store_true", help="--order-by: highest first")
    add_view(sub, "runs")
    command(runs, "show", cmd_runs_show, "show a run's params and metrics").add_argument(
        "run_id", help=RUN_HELP
    )
    sub = command(
        runs,
        "compare",
        cmd_runs_compare,
        "show runs' metrics and the params that differ among them side by side",
    )
    sub.add_argument(
        "run_ids", nargs="+", metavar="RUN_ID", help="two or more runs (`tessera runs ls` lists them)"
    )
    sub.add_argument(
        "--all", action="store_true", help="show every param, those with one value in every run too"
    )
    sub = command(
        runs,
        "metrics",
        cmd_runs_metrics,
        "list every metric of a run, those `runs show` leaves out too; with --history KEY, one metric's steps",
    )
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument(
        "--history",
        metavar="KEY",
        default="",
        help="print the last 20 logged points of metric KEY (step, value, time) and plot them all against "
        "steps",
    )
    sub.add_argument("--all", action="store_true", help="with --history: print every point, not the last 20")
    command(runs, "rm", cmd_runs_rm, "delete a run (kept until restored)").add_argument(
        "run_id", help=RUN_HELP
    )
    command(runs, "restore", cmd_runs_restore, "bring back a deleted run").add_argument(
        "run_id", help=RUN_HELP
    )
    artifacts = group(
        runs,
        "artifacts",
        "files kept with a run (plots, notes, small models)",
        "Files kept with a run, such as plots, notes and small models, under paths like a "
        "directory tree of their own.",
        [
            (
                "store every file under plots/ with the run, under plots",
                "tessera runs artifacts put RUN_ID plots --path plots",
            ),
            ("list them", "tessera runs artifacts ls RUN_ID"),
            ("write them into out/", "tessera runs artifacts get RUN_ID plots -o out/"),
        ],
        dest="artifacts_command",
    )
    sub = command(artifacts, "ls", cmd_runs_artifacts_ls, "list a run's artifacts in path order")
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument("path", nargs="?", default="", help="only those under this directory")
    sub = command(
        artifacts, "put", cmd_runs_artifacts_put, "store a file, or every file under a directory, with a run"
    )
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument(
        "file",
        help="a file, or a directory: its files keep their paths under it, without its own name "
        "(as MLflow's log_artifacts; links to directories are not followed)",
    )
    sub.add_argument(
        "--path",
        default="",
        metavar="DIR",
        help="directory in the run to store it in, under the file's own name (default: the top)",
    )
    sub = command(
        artifacts,
        "get",
        cmd_runs_artifacts_get,
        "download an artifact, or every one under a directory (each verified); a broken connection or a "
        "daemon restart is reconnected and goes on from the bytes written",
    )
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument("path", help="an artifact's path, or a directory of them")
    sub.add_argument(
        "-o",
        "--output",
        help="file or directory to write to (default: the current directory; a directory keeps "
        "the artifacts' paths under it; end it with / to have it made)",
    )
    sub.add_argument(
        "--force", action="store_true", help="replace the files already there (else refused, exit 2)"
    )
    sub.add_argument("--resume", action="store_true", help=RESUME_HELP)
    sub = command(runs, "leaderboard", cmd_runs_leaderboard, "rank an experiment's runs by a metric")
    sub.add_argument("experiment", help=EXPERIMENT_HELP)
    sub.add_argument("metric", help="the metric's name, e.g. val_loss")
    sub.add_argument(
        "--mode",
        choices=["min", "max"],
        help="which is better (default: min for a name with loss, error, mae, mse or mape in it, else max)",
    )
    sub.add_argument(
        "--field",
        choices=["last", "min", "max"],
        help="which value of each run's metric ranks it (default: min with --mode min, else max)",
    )
    sub.add_argument("--limit", type=whole(high=INT32_MAX), default=10, help="runs shown (default 10)")

    experiments = group(
        commands,
        "experiments",
        "experiments: named groups of runs",
        "Experiments: named groups of runs, such as the runs of the jobs whose spec says "
        "experiment = NAME, with a description and tags. A deleted one is kept, with its runs, until restored.",
        [
            ("list the experiments", "tessera experiments ls"),
            ("one experiment's description, tags and run count", "tessera experiments show clips"),
            ("describe one", 'tessera experiments update clips --description "4-D CNN on clips"'),
            ("delete one and its runs (restore brings them back)", "tessera experiments rm clips"),
        ],
    )
    sub = command(experiments, "ls", cmd_experiments_ls, "list the experiments, by name")
    sub.add_argument("--prefix", default="", help="only names starting with this")
    add_view(sub, "experiments")
    command(
        experiments, "show", cmd_experiments_show, "show an experiment's description, tags and run count"
    ).add_argument("name", help=EXPERIMENT_HELP)
    sub = command(experiments, "update", cmd_experiments_update, "change an experiment's description or tags")
    sub.add_argument("name", help=EXPERIMENT_HELP)
    sub.add_argument("--description", help='the new description ("" clears it)')
    sub.add_argument(
        "--tag", action="append", type=key_value, metavar="KEY=VALUE", help="set a tag (repeatable)"
    )
    sub.add_argument("--remove-tag", action="append", metavar="KEY", help="drop a tag (repeatable)")
    command(
        experiments, "rm", cmd_experiments_rm, "delete an experiment and its runs (kept until restored)"
    ).add_argument("name", help=EXPERIMENT_HELP)
    command(
        experiments,
        "restore",
        cmd_experiments_restore,
        "bring back an experiment and the runs deleted with it",
    ).add_argument("name", help=EXPERIMENT_HELP)

    admin = group(
        commands,
        "admin",
        "operator tasks (admin token): backup, verify",
        "Operator tasks on the running daemon; where it checks tokens, they take one with the admin role.",
        [
            ("back the daemon up to a file", "tessera admin backup -o tessera-backup.tar"),
            ("check the store for damage", "tessera admin verify"),
        ],
    )
    command(
        admin,
        "verify",
        cmd_admin_verify,
        "check the running daemon's store for damage: every blob re-hashed against its sha256, and "
        "the blob of every model version, dataset version, run artifact and job checkpoint looked "
        "for. Each problem is printed with the records that own the blob; the exit status is 1 when "
        "there is any. Takes as long as reading every blob once (--transfer-timeout bounds it); "
        "`tesserad verify` does the same with the daemon stopped",
    ).add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="draw the bytes checked out of the blobs' size, the rate and the time left on stderr, over one "
        "line (default: when stderr is a terminal, and not with --json)",
    )
    sub = command(
        admin,
        "backup",
        cmd_admin_backup,
        "save a consistent backup of the running daemon (store and blobs) to a file; "
        "`tesserad restore FILE --data-dir DIR` restores it. The daemon makes one at a time: "
        "one asked for meanwhile waits for it to end",
    )
    sub.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="the archive to write; it appears only once the whole backup has come and checks out. "
        '"-": write it to stdout as it comes (not a terminal), checked on the way, the summary on '
        "stderr; a fault stops it before the bytes that show it are written, the status is "
        "non-zero, and what was written is an incomplete archive, no backup",
    )
    sub.add_argument("--force", action="store_true", help="replace the file --output names if it exists")
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="draw the bytes received out of the archive's size, the rate and the time left on stderr, over one "
        "line (default: when stderr is a terminal, and not with --json)",
    )

    export = group(
        commands,
        "export",
        "export a version to another format (onnx)",
        "Export a model's version to another format, registered as the model's next version.",
        [
            (
                "export the version staging points at to ONNX; move staging onto the export",
                "tessera export onnx clips-cnn4d --alias staging --set-alias staging",
            ),
        ],
        metavar="FORMAT",
        other_choice_hint="the format comes first, `tessera export onnx {value}`",
        followed_choice_hint="onnx is the only format, `tessera export onnx MODEL`",
    )
    sub = command(export, "onnx", cmd_export_onnx, "export a safetensors version to ONNX as a new version")
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    add_version_flags(sub, "the safetensors version to export; default: latest")
    assert isinstance(sub, CommandParser)  # add_subparsers makes its commands' parsers of its own class
    sub.exclusive_hint = (
        "--alias picks the version exported, as --version does; --set-alias NAME moves an alias onto "
        "the export (`--version 1 --set-alias production`)"
    )
    sub.add_argument(
        "--opset",
        type=whole(high=INT32_MAX),
        default=0,
        help="ONNX opset (default 0: the exporter's default)",
    )
    sub.add_argument(
        "--conv4d",
        choices=["auto", "decomposed", "native"],
        default="auto",
        help="how Conv4d layers are written: auto (default; the faster graph in onnxruntime), decomposed "
        "(3-D convolutions) or native (one Conv node with four spatial dimensions)",
    )
    add_set_alias_flag(sub, refuse_alias=False)
    sub.add_argument(
        "--description",
        default="",
        help="free text stored with the new version (an existing export keeps its own)",
    )

    sub = command(commands, "predict", cmd_predict, "run a model on inputs from a file")
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    sub.add_argument(
        "--input",
        required=True,
        help=".npz with arrays by input name, or .npy for the model's sole input ('input' where it has "
        "several); - reads either from stdin",
    )
    add_version_flags(
        sub, "default: as the deployment routes, else the daemon's serving.default_alias, else latest"
    )
    sub.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the outputs to this .npz (.npz is added where missing); an existing one is refused",
    )
    sub.add_argument("--force", action="store_true", help="replace the --output file if it exists")

    sub = command(
        commands, "explain", cmd_explain, "attribute a model's output to each input position (captum)"
    )
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    sub.add_argument(
        "--input",
        required=True,
        help=".npz with arrays by input name, or .npy for the model's sole input ('input' where it has "
        "several); - reads either from stdin",
    )
    sub.add_argument(
        "--method",
        choices=[*SHORT_NAMES, *METHODS],
        default="ig",
        metavar="METHOD",
        help="ig (integrated gradients, default), saliency, occlusion, or shap (GradientShap)",
    )
    sub.add_argument(
        "--target",
        dest="output_index",
        type=output_index,
        metavar="N",
        help="the output index (class) to explain; default: each row's largest output (the daemon address, also --target, goes before the command)",
    )
    add_version_flags(
        sub,
        "default: the lowest the deployment routes to, else the daemon's serving.default_alias, else latest",
    )
    sub.add_argument(
        "--steps",
        type=whole(high=INT32_MAX),
        default=0,
        help="ig path steps (default 32), shap samples (default 16)",
    )
    sub.add_argument("--baseline", type=finite, default=0.0, help="the input value compared with (default 0)")
    sub.add_argument(
        "--window",
        type=window_sizes,
        default=[],
        help="occlusion window per dimension of one row, e.g. 1,1,4,4,4",
    )
    sub.add_argument("--top", type=whole(), default=10, help="positions to print per row (default 10)")
    sub.add_argument(
        "-o",
        "--output",
        "--out",
        metavar="FILE",
        help="write the attributions to this .npz (arrays by input name; .npz is added where missing); "
        "an existing one is refused",
    )
    sub.add_argument("--force", action="store_true", help="replace the --output file if it exists")

    sub = command(
        commands, "stats", cmd_stats, "show the latency percentiles and throughput of a loaded model"
    )
    sub.add_argument("model", nargs="?", type=model_name, default="", help="default: every loaded model")
    add_version_flags(sub, "with MODEL; default: every loaded version")
    scope = sub.add_mutually_exclusive_group()
    scope.add_argument("--reset", action="store_true", help="zero the figures after reading them")
    scope.add_argument(
        "--cluster",
        action="store_true",
        help="at a primary: its figures merged with those of every serving replica following it",
    )

    sub = command(
        commands,
        "load",
        cmd_load,
        "load and warm up a version for serving (or reload it, swapping it without dropping requests)",
    )
    sub.description = (
        f"{sub.description}. Loading replaces the version's whole serving config: an option not "
        "given takes the version's saved config (--save), else its default, not the value the "
        "version ran with, unless --keep-config is given."
    )
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    add_version_flags(sub, "default: latest")
    sub.add_argument(
        "--keep-config",
        action="store_true",
        help="start from the config the version runs with now (as `tessera serve-status --json` shows "
        "it, defaults filled in: e.g. --instances alone keeps the intra-op threads worked out for the "
        "old count) and change only the options given; the version must be loaded. With --save, "
        "start from the options its load set (given or saved) alone: the daemon's defaults are not "
        "saved, so each machine still works its own out",
    )
    sub.add_argument(
        "--save",
        action="store_true",
        help="also save these options as the version's serving config, in place of the one saved "
        "before (none given: remove it): whenever the version is loaded again, a load that leaves an "
        "option out takes it from there (a request's load, tessera load, --preload or serving.preload "
        "at the daemon's start, a read replica); a restart loads nothing by itself. Without --save a "
        "load is a one-off that saves nothing. Refused at a read replica: save at the primary",
    )
    sub.add_argument(
        "--runtime",
        choices=["onnx", "torch"],
        help="onnx (onnxruntime, with the CUDA provider on a GPU) or torch (default: onnx for an ONNX "
        "version, torch for a safetensors one)",
    )
    sub.add_argument(
        "--device",
        help="cpu, cuda:N (N a GPU index) or cuda (GPU 0) (default: cuda:0 when a GPU is present, else cpu)",
    )
    sub.add_argument(
        "--instances",
        type=serving_option("instances"),
        help="model instances running batches in parallel (default: the daemon's serving.instances, "
        "else 2 on a CPU and 1 on a GPU)",
    )
    sub.add_argument(
        "--max-batch-size",
        type=serving_option("max_batch_size"),
        help="most rows per batch; 1: no batching (default: the daemon's serving.max_batch_size, 32 unless set)",
    )
    sub.add_argument(
        "--max-queue-delay-us",
        type=serving_option("max_queue_delay_us"),
        help="microseconds a request may wait for more rows to fill a batch while the model is idle; "
        "under load batches fill without waiting; 0: a lone request never waits, whatever the daemon's "
        "default (default: the daemon's serving.max_queue_delay_us, 0 unless set)",
    )
    sub.add_argument(
        "--max-queue-size",
        type=serving_option("max_queue_size"),
        help="most requests queued; beyond it a request is refused: RESOURCE_EXHAUSTED over tessera's "
        "Predict, and as Triton refuses it over the Open Inference Protocol, UNAVAILABLE over its gRPC "
        "and 503 with Retry-After: 1 over its HTTP (default: the daemon's serving.max_queue_size, 1024 "
        "unless set)",
    )
    sub.add_argument(
        "--warmup-runs",
        type=serving_option("warmup_runs"),
        help="inference runs on random inputs before the version takes traffic; 0: none (default: the "
        "daemon's serving.warmup_runs, 2 unless set)",
    )
    sub.add_argument(
        "--intra-op-threads",
        type=serving_option("intra_op_threads"),
        help="threads per instance for the runtime's operators; 0: on a CPU the cores shared among the "
        "instances, on a GPU the runtime's own default (default: the daemon's serving.intra_op_threads, "
        "else as 0)",
    )
    sub.add_argument(
        "--response-cache",
        action=argparse.BooleanOptionalAction,
        help="answer a request identical to an earlier one from the daemon's response cache without "
        "running the model: only for a version whose outputs are deterministic (depend on its inputs "
        "alone); the daemon needs serving.response_cache_size > 0 (default: the version's saved config, "
        "else off)",
    )

    sub = command(
        commands,
        "unload",
        cmd_unload,
        "stop serving a version: it takes no new requests, finishes those queued, and is freed",
    )
    sub.add_argument("model", type=model_name, help=MODEL_HELP)
    add_version_flags(sub, "default: every loaded version of the model")

    command(
        commands, "serve-status", cmd_serve_status, "list the loaded model versions and their config"
    ).add_argument(
        "model", nargs="?", default="", help="only this model's versions (default: every loaded model)"
    )

    sub = command(
        commands,
        "demo",
        cmd_demo,
        "the whole life cycle on a synthetic spacetime dataset, told step by step (no --json)",
        prints_json=False,
    )
    sub.add_argument(
        "--name",
        default="demo",
        help="prefix of the dataset and model names (default demo: demo-spacetime, demo-cnn4d)",
    )
    sub.add_argument(
        "--samples", type=whole(), default=192, help="clips in the synthetic dataset (default 192)"
    )
    sub.add_argument("--epochs", type=whole(), default=3, help="training epochs (default 3)")
    sub.add_argument(
        "--requests", type=whole(), default=200, help="predict calls for the latency figures (default 200)"
    )
    for listing, starting in (("sweeps", "sweep"), ("jobs", "train")):
        lister = commands.choices[listing]
        assert isinstance(
            lister, CommandParser
        )  # add_subparsers makes its commands' parsers of its own class
        lister.spec_choice_hint = f"a spec starts one with `tessera {starting} {{value}}`"
    root.name_outer_options()
    return parser

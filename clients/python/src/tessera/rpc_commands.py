"""The daemon's messages in a CLI user's words: where a message names an RPC ("create it with
CreateModel"), the CLI shows the command that does the same (the SDK the call, `tessera.sdk_words`)."""

from __future__ import annotations

from tessera.errors import TARGET_WORDS, TLS_CA_WORDS, TLS_CLIENT_WORDS, TLS_NAME_WORDS, TLS_WORDS
from tessera.fix_words import Words
from tessera.training import LIST_ARTIFACTS_WORDS
from tessera.transfer import RESUME_WORDS, WITH_RESUME_WORDS, WITHOUT_RESUME_WORDS

COMMAND_BY_RPC: dict[str, str] = {
    # Registry
    "CreateModel": "`tessera models push MODEL FILE`",
    "UploadVersion": "`tessera models push MODEL FILE`",
    "UploadVersionInline": "`tessera models push MODEL FILE`",
    "UploadVersionBatch": "the Python SDK's client.models.push_batch()",
    "ListModels": "`tessera models ls`",
    "GetVersion": "`tessera models show MODEL`",
    "ListVersions": "`tessera models versions MODEL`",
    "DeleteVersion": "`tessera models rm MODEL VERSION`",
    "DeleteModel": "`tessera models rm MODEL`",
    "DownloadVersion": "`tessera models download MODEL PATH`",
    "SetAlias": "`tessera models alias MODEL ALIAS VERSION`",
    "DeleteAlias": "`tessera models unalias MODEL ALIAS`",
    "ListAliasHistory": "`tessera models aliases MODEL --history`",
    "CompareVersions": "`tessera models compare MODEL A B`",
    "ExportOnnx": "`tessera export onnx MODEL`",
    "Deploy": "`tessera models deploy MODEL ROUTE...`",
    "Rollback": "`tessera models rollback MODEL`",
    "ListDeployments": "`tessera models deployments MODEL`",
    "WatchChanges": "`tessera models changes`",
    "UpdateModel": "the Python SDK's client.models.update()",
    # Datasets
    "UploadDataset": "`tessera datasets push NAME FILE`",
    "ListDatasets": "`tessera datasets ls`",
    "GetDatasetVersion": "`tessera datasets show NAME[:VERSION]`",
    "ListDatasetVersions": "`tessera datasets versions NAME`",
    "DeleteDataset": "`tessera datasets rm NAME[:VERSION]`",
    "DownloadDataset": "`tessera datasets download NAME[:VERSION]`",
    # Training
    "SubmitJob": "`tessera train SPEC.toml`",
    "ListJobs": "`tessera jobs ls`",
    "WatchJob": "`tessera jobs watch JOB_ID`",
    "CancelJob": "`tessera jobs cancel JOB_ID`",
    "ListRuns": "`tessera runs ls`",
    "GetRun": "`tessera runs show RUN_ID`",
    "ListRunMetrics": "`tessera runs metrics RUN_ID`",
    "GetMetricHistory": "`tessera runs metrics RUN_ID --history KEY`",
    "LogMetrics": "the Python SDK's client.training.log_metrics()",
    "LogMetricsStream": "the Python SDK's client.training.log_metrics_stream()",
    "CompareRuns": "`tessera runs compare RUN_ID RUN_ID...`",
    "DeleteRun": "`tessera runs rm RUN_ID`",
    "RestoreRun": "`tessera runs restore RUN_ID`",
    "UpdateRun": "the Python SDK's client.training.update_run()",
    "UploadRunArtifact": "`tessera runs artifacts put RUN_ID FILE`",
    "ListRunArtifacts": "`tessera runs artifacts ls RUN_ID`",
    "DownloadRunArtifact": "`tessera runs artifacts get RUN_ID PATH`",
    "ListExperiments": "`tessera experiments ls`",
    "UpdateExperiment": "`tessera experiments update NAME`",
    "DeleteExperiment": "`tessera experiments rm NAME`",
    "RestoreExperiment": "`tessera experiments restore NAME`",
    "Leaderboard": "`tessera runs leaderboard EXPERIMENT METRIC`",
    "CreateRun": "the Python SDK's client.training.create_run()",
    "CreateExperiment": "the Python SDK's client.training.create_experiment()",
    "SubmitSweep": "`tessera sweep SPEC.toml`",
    "GetSweep": "`tessera sweeps show SWEEP_ID`",
    "ListSweeps": "`tessera sweeps ls`",
    "CancelSweep": "`tessera sweeps cancel SWEEP_ID`",
    # Inference
    "Predict": "`tessera predict MODEL --input FILE`",
    "Explain": "`tessera explain MODEL --input FILE`",
    "GetStats": "`tessera stats MODEL`",
    "ListLoaded": "`tessera serve-status`",
    "LoadModel": "`tessera load MODEL`",
    "UnloadModel": "`tessera unload MODEL`",
    # System
    "GetServerInfo": "`tessera info`",
    "Backup": "`tessera admin backup -o FILE`",
    "VerifyStore": "`tessera admin verify`",
    "VerifyStoreStream": "`tessera admin verify`",
}
"""RPC name -> the `tessera` command that does it (or, where none does, the SDK call)."""

# An RPC told to name a version ("LoadModel naming version 3"): its command with --version.
_VERSIONED_COMMAND = {
    "LoadModel": "`tessera load MODEL --version {}`",
    "Predict": "`tessera predict MODEL --input FILE --version {}`",
}


FLAG_BY_FIELD: dict[str, str] = {
    "allow_nonfinite": "`tessera datasets push --allow-nonfinite`",
    "force": "--force",
    # Every list the CLI filters by a name prefix (models, datasets, experiments ls) sends it here.
    "name_prefix": "--prefix",
}
"""Request field a daemon message names (one to set, or one it refused) -> the flag that sets it."""

FLAG_BY_ARGUMENT: dict[str, str] = {
    TARGET_WORDS: "--target HOST:PORT (env TESSERA_TARGET)",
    TLS_WORDS: "--tls (the system's CAs) or --tls-ca FILE",
    TLS_CA_WORDS: "--tls-ca FILE",
    TLS_NAME_WORDS: "--tls-server-name NAME",
    TLS_CLIENT_WORDS: "--tls-cert FILE and --tls-key FILE",
    RESUME_WORDS: "run it again with --resume",
    # After RESUME_WORDS, which holds these words.
    WITH_RESUME_WORDS: "with --resume",
    WITHOUT_RESUME_WORDS: "without --resume",
    LIST_ARTIFACTS_WORDS: "list them with `tessera runs artifacts ls RUN_ID`",
}
"""The SDK's words for a client argument or call (an unreachable daemon's, an interrupted
download's or a missing artifact's message names them) -> the flags or command."""


CLI_WORDS = Words(COMMAND_BY_RPC, _VERSIONED_COMMAND, FLAG_BY_FIELD, FLAG_BY_ARGUMENT)


def in_cli_words(message: str) -> str:
    """`message` with the fix that ends each of its lines in a CLI user's words (a spec's problems
    come one to a line, each with its own fix): each RPC it names as its command, each request
    field or client argument it tells the caller to set as the flag that sets it (see
    `tessera.fix_words.Words`). Give it an error's `daemon_message`: its `message` has the
    SDK's words."""
    return CLI_WORDS.say(message)

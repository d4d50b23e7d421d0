"""The daemon's messages in an SDK user's words: where a message names an RPC as its fix
("ListVersions lists them"), the SDK's exceptions say the call that does the same
("`client.models.versions(name)` lists them"), as the CLI says its command
(`tessera.rpc_commands`)."""

from __future__ import annotations

from tessera.fix_words import Words

CALL_BY_RPC: dict[str, str] = {
    # Registry
    "CreateModel": "`client.models.push(name, path)`",
    "UploadVersion": "`client.models.push(name, path)`",
    "UploadVersionInline": "`client.models.push(name, path)`",
    "UploadVersionBatch": "`client.models.push_batch(...)`",
    "GetModel": "`client.models.get(name)`",
    "ListModels": "`client.models.list()`",
    "UpdateModel": "`client.models.update(name)`",
    "DeleteModel": "`client.models.delete(name)`",
    "GetVersion": "`client.models.version(name)`",
    "ListVersions": "`client.models.versions(name)`",
    "DeleteVersion": "`client.models.delete_version(name, version)`",
    "DownloadVersion": "`client.models.download(name, path)`",
    "GetLineage": "`client.models.lineage(name, version)`",
    "SetAlias": "`client.models.set_alias(name, alias, version)`",
    "GetAlias": "`client.models.alias(name, alias)`",
    "ListAliases": "`client.models.aliases(name)`",
    "ListAliasHistory": "`client.models.alias_history(name)`",
    "DeleteAlias": "`client.models.delete_alias(name, alias)`",
    "CompareVersions": "`client.models.compare(name, a, b)`",
    "ExportOnnx": "`client.models.export_onnx(name)`",
    "Deploy": "`client.models.deploy(name, routes)`",
    "Rollback": "`client.models.rollback(name)`",
    "GetDeployment": "`client.models.deployment(name)`",
    "ListDeployments": "`client.models.deployments(name)`",
    "WatchChanges": "`client.models.watch_changes()`",
    # Datasets
    "UploadDataset": "`client.datasets.push(name, path)`",
    "GetDataset": "`client.datasets.get(name)`",
    "ListDatasets": "`client.datasets.list()`",
    "GetDatasetVersion": "`client.datasets.version(ref)`",
    "ListDatasetVersions": "`client.datasets.versions(name)`",
    "DeleteDataset": "`client.datasets.delete(name)`",
    "DownloadDataset": "`client.datasets.download(ref, path)`",
    "DownloadSplitIndices": "`client.datasets.split_indices(ref, split)`",
    # Training
    "SubmitJob": "`client.training.submit(spec)`",
    "GetJob": "`client.training.job(job_id)`",
    "ListJobs": "`client.training.jobs()`",
    "WatchJob": "`client.training.watch(job_id)`",
    "CancelJob": "`client.training.cancel(job_id)`",
    "CreateExperiment": "`client.training.create_experiment(name)`",
    "GetExperiment": "`client.training.experiment(name)`",
    "ListExperiments": "`client.training.experiments()`",
    "UpdateExperiment": "`client.training.update_experiment(name)`",
    "DeleteExperiment": "`client.training.delete_experiment(name)`",
    "RestoreExperiment": "`client.training.restore_experiment(name)`",
    "CreateRun": "`client.training.create_run(experiment)`",
    "UpdateRun": "`client.training.update_run(run_id)`",
    "GetRun": "`client.training.run(run_id)`",
    "ListRuns": "`client.training.runs()`",
    "DeleteRun": "`client.training.delete_run(run_id)`",
    "RestoreRun": "`client.training.restore_run(run_id)`",
    "LogParams": "`client.training.log_params(run_id, params)`",
    "LogMetrics": "`client.training.log_metrics(run_id, metrics, step)`",
    "LogMetricsStream": "`client.training.log_metrics_stream(run_id, steps)`",
    "ListRunMetrics": "`client.training.list_metrics(run_id)`",
    "GetMetricHistory": "`client.training.metric_history(run_id, key)`",
    "CompareRuns": "`client.training.compare_runs(run_ids)`",
    "Leaderboard": "`client.training.leaderboard(experiment, metric)`",
    "UploadRunArtifact": "`client.training.log_artifact(run_id, local_path)`",
    "ListRunArtifacts": "`client.training.list_artifacts(run_id)`",
    "DownloadRunArtifact": "`client.training.download_artifact(run_id, path)`",
    "SubmitSweep": "`client.training.submit_sweep(spec)`",
    "GetSweep": "`client.training.sweep(sweep_id)`",
    "ListSweeps": "`client.training.sweeps()`",
    "CancelSweep": "`client.training.cancel_sweep(sweep_id)`",
    # Inference
    "Predict": "`client.inference.predict(model, inputs)`",
    "PredictStream": "`client.inference.predict_stream(model, items)`",
    "Explain": "`client.inference.explain(model, inputs)`",
    "GetStats": "`client.inference.stats(model)`",
    "ListLoaded": "`client.inference.loaded()`",
    "LoadModel": "`client.inference.load(model)`",
    "UnloadModel": "`client.inference.unload(model)`",
    "ListShadowResults": "`client.inference.shadow_results(model)`",
    # System
    "GetServerInfo": "`client.system.info()`",
    "WatchSystem": "`client.system.watch()`",
    "Backup": "`client.system.backup(path)`",
    "VerifyStore": "`client.system.verify()`",
    "VerifyStoreStream": "`client.system.verify(progress=)`",
}
"""RPC name -> the SDK call that does it (`client` a tessera.Client or tessera.aio.Client)."""

# An RPC told to name a version ("LoadModel naming version 3"): its call with the version.
_VERSIONED_CALL = {
    "LoadModel": "`client.inference.load(model, {})`",
    "Predict": "`client.inference.predict(model, inputs, version={})`",
}

ARGUMENT_BY_FIELD: dict[str, str] = {
    "allow_nonfinite": "`allow_nonfinite=True`",
    "force": "`force=True`",
    # Every list that filters by a name prefix (models, datasets, experiments) sends it here.
    "name_prefix": "`prefix=`",
}
"""Request field a daemon message names (one to set, or one it refused) -> the argument that sets it."""

SDK_WORDS = Words(CALL_BY_RPC, _VERSIONED_CALL, ARGUMENT_BY_FIELD)


def in_sdk_words(message: str) -> str:
    """`message` with the fix that ends each of its lines in an SDK user's words: each RPC it
    names as the call that does it, each request field it tells the caller to set as the
    argument that sets it (see `tessera.fix_words.Words`)."""
    return SDK_WORDS.say(message)

"""`tessera predict`, `explain`, `stats`, `load`, `unload` and `serve-status`: serving. Each
command takes (client, args, out) and prints its result."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera.cli.arguments import UsageError, picked_number_or_alias, picked_version, replaced_only_with_force
from tessera.cli.inputs import input_names_explained, load_inputs, sent_to_sole_input
from tessera.cli.output import Output, size, when
from tessera.client import Client
from tessera.explanations import SHORT_NAMES, top_positions
from tessera.messages import counted
from tessera.state_words import number_word
from tessera.transfer import PartialFile, check_free
from tessera.transport import MODEL_CALL_TIMEOUT_S
from tessera.v1 import inference_pb2


def npz_target(name: str | None, force: bool) -> Path | None:
    """The .npz file `name` names (".npz" added where it is missing, as np.savez adds it); a
    file already there refused unless `force`, before the daemon is asked for anything."""
    if not name:
        return None
    path = Path(name if name.endswith(".npz") else f"{name}.npz")
    with replaced_only_with_force():
        check_free(path, force)
    return path


def save_npz(path: Path, arrays: Mapping[str, np.ndarray], force: bool) -> None:
    """`arrays` written to `path` through a `PartialFile`, so that a failure, a full disk or
    Ctrl-C never leaves half a file under the name, nor a temp file beside it."""
    with replaced_only_with_force():
        file = PartialFile(path, force)
    try:
        with file.writing() as temp:
            # allow_pickle named so that an array of that name cannot be taken for the flag;
            # outputs and attributions are numeric arrays, which need no pickling.
            np.savez(temp, allow_pickle=False, **arrays)
    except BaseException:
        file.discard()
        raise
    file.close()
    with replaced_only_with_force():
        # The name may have been taken while the daemon computed.
        file.keep()


def cmd_predict(client: Client, args: argparse.Namespace, out: Output) -> None:
    output = npz_target(args.output, args.force)
    inputs = load_inputs(args.input)
    version, alias = picked_number_or_alias(args)
    with input_names_explained(args.input, inputs):
        prediction = sent_to_sole_input(
            client,
            args.model,
            version or alias,
            inputs,
            lambda sent, pinned: client.inference.predict(
                args.model,
                sent,
                version=pinned or version,
                alias=None if pinned else alias,
                timeout=args.timeout,
            ),
        )
    if output:
        save_npz(output, prediction.outputs, args.force)
    if out.as_json:
        return out.json(
            {
                "model": prediction.model,
                "version": prediction.version,
                "queue_time_us": prediction.queue_time_us,
                "compute_time_us": prediction.compute_time_us,
                "outputs": {name: array.tolist() for name, array in prediction.outputs.items()},
            }
        )
    out.line(
        f"{prediction.model} v{prediction.version}: queued {prediction.queue_time_us} us, "
        f"computed {prediction.compute_time_us} us (batch of {counted(prediction.batch_rows, 'row')})"
    )
    for name, array in prediction.outputs.items():
        out.line(
            f"{name} {array.dtype}{list(array.shape)}:\n{np.array2string(array, precision=4, threshold=64)}"
        )
    if output:
        out.line(f"wrote {output}")


def cmd_explain(client: Client, args: argparse.Namespace, out: Output) -> None:
    attributions_file = npz_target(args.output, args.force)
    inputs = load_inputs(args.input)
    version, alias = picked_number_or_alias(args)
    with input_names_explained(args.input, inputs):
        explanation = sent_to_sole_input(
            client,
            args.model,
            version or alias,
            inputs,
            lambda sent, pinned: client.inference.explain(
                args.model,
                sent,
                args.method,
                version=pinned or version,
                alias=None if pinned else alias,
                target=args.output_index,
                steps=args.steps,
                baseline=args.baseline,
                window=args.window,
                timeout=max(args.timeout, MODEL_CALL_TIMEOUT_S),
            ),
        )
    if attributions_file:
        save_npz(attributions_file, explanation.attributions, args.force)
    top = {
        name: [top_positions(row, args.top) for row in array]
        for name, array in explanation.attributions.items()
    }
    if out.as_json:
        return out.json(
            {
                "model": explanation.model,
                "version": explanation.version,
                "explained_version": explanation.explained_version,
                "output_indices": explanation.output_indices,
                "convergence_delta": explanation.convergence_delta,
                "compute_time_us": explanation.compute_time_us,
                "top": {
                    name: [[{"index": list(index), "value": value} for index, value in row] for row in rows]
                    for name, rows in top.items()
                },
            }
        )
    through = (
        f", explained through torch v{explanation.explained_version}"
        if explanation.explained_version != explanation.version
        else ""
    )
    out.line(
        f"{explanation.model} v{explanation.version}{through}: {SHORT_NAMES.get(args.method, args.method)}, "
        f"computed in {explanation.compute_time_us / 1000:.1f} ms"
    )
    for name, rows in top.items():
        shape = list(explanation.attributions[name].shape)
        for row, positions in enumerate(rows):
            delta = explanation.convergence_delta[row] if explanation.convergence_delta else None
            completeness = f", completeness error {delta:+.2e}" if delta is not None else ""
            out.line(
                f"{name}{shape} row {row}, output {explanation.output_indices[row]}{completeness}: "
                f"top {counted(len(positions), 'position')} (index within the row, attribution)"
            )
            for index, value in positions:
                out.line(f"  {index}  {value:+.6g}")
    if attributions_file:
        out.line(f"wrote {attributions_file}")


def cmd_stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = picked_version(args)
    if version is not None and not args.model:
        raise UsageError(
            f"--version picks a version of a model: name it too (`tessera stats MODEL --version {version}`)"
        )
    if args.cluster:
        return print_cluster_stats(client.inference.cluster_stats(args.model, version), out)
    stats = client.inference.stats(args.model, version, reset=args.reset)
    if out.as_json:
        return out.json(list(stats))
    if not stats:
        return out.line(
            f"nothing is loaded{_of(args.model, version)}, so there are no figures; "
            "`tessera load MODEL` loads a version, as a predict does"
        )
    print_stats(stats, out)


def _of(model: str, version: int | str | None = None) -> str:
    """ " of MODEL [vVERSION | alias ALIAS]" for a listing narrowed to a model, else ""."""
    if not model:
        return ""
    if version is None:
        return f" of {model}"
    return f" of {model} " + (f"v{version}" if isinstance(version, int) else f"alias {version}")


def print_cluster_stats(response: inference_pb2.GetStatsResponse, out: Output) -> None:
    replicas, unreachable = list(response.replicas), list(response.unreachable_replicas)
    reasons = {r.address: r.reason for r in response.unreachable}
    if out.as_json:
        return out.json(
            {
                "stats": list(response.stats),
                "replicas": replicas,
                "unreachable_replicas": unreachable,
                "unreachable": [{"address": a, "reason": reasons.get(a, "")} for a in unreachable],
                "refused": list(response.refused),
            }
        )
    print_stats(response.stats, out)
    if replicas:
        out.line(f"merged: this daemon and {counted(len(replicas), 'replica')} ({', '.join(replicas)})")
    elif not unreachable:
        out.line("no serving replica follows this daemon: these are its own figures")
    if unreachable:
        out.line(f"left out, did not answer: {counted(len(unreachable), 'replica')}")
        for address in unreachable:
            out.line(f"  {address}: {reasons.get(address) or 'no reason given (an older primary)'}")
    if response.refused:
        out.line(f"refused by this daemon lately: {counted(len(response.refused), 'replica')}")
        for r in response.refused:
            out.line(f"  {r.address} (from {r.peer}) at {when(r.time)}: {r.rpc} {r.code}: {r.reason}")


def print_stats(stats: Sequence[inference_pb2.ModelStats], out: Output) -> None:
    rows = []
    for s in stats:
        for what, summary in (("queue", s.queue), ("compute", s.compute), ("total", s.total)):
            rows.append(
                (
                    f"{s.model} v{s.version}",
                    what,
                    summary.count,
                    f"{summary.p50_us:.0f}",
                    f"{summary.p95_us:.0f}",
                    f"{summary.p99_us:.0f}",
                    f"{summary.p999_us:.0f}",
                    f"{summary.max_us:.0f}",
                )
            )
    out.table(
        "latency (us)",
        ["version", "stage", "count", "p50", "p95", "p99", "p99.9", "max"],
        rows,
        whole=("version",),
    )
    for s in stats:
        batches = ", ".join(f"{b.count} of {counted(b.rows, 'row')}" for b in s.batch_sizes)
        out.line(
            f"{s.model} v{s.version}: {counted(s.request_count, 'request')} ({s.error_count} failed), "
            f"{s.throughput_rps:.1f} req/s; batches: {batches or 'none yet'}"
        )


# `tessera load` flag -> ServingConfig field, in the proto's order.
LOAD_FLAGS = (
    "runtime",
    "device",
    "instances",
    "max_batch_size",
    "max_queue_delay_us",
    "max_queue_size",
    "warmup_runs",
    "intra_op_threads",
    "response_cache",
)


def cmd_load(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = picked_version(args)
    config = current_config(client, args.model, version, set_only=args.save) if args.keep_config else {}
    config.update((name, getattr(args, name)) for name in LOAD_FLAGS if getattr(args, name) is not None)
    loaded = client.inference.load(args.model, version, save_config=args.save, **config)
    if out.as_json:
        return out.json(loaded)
    print_loaded([loaded], out)


def current_config(
    client: Client, model: str, version: int | str | None, set_only: bool = False
) -> dict[str, Any]:
    """The config the version runs with now (every default filled in), as `load` takes it; a
    version that is not loaded has none to keep, and is refused rather than loaded with the
    defaults, which is what the caller asked not to get. `set_only` (for a save): only the fields
    its load set, itself or from the saved config, so that a default the daemon worked out for its
    machine (the intra-op threads from its cores) is not saved for every machine."""
    number = version if isinstance(version, int) else client.models.version(model, version).version
    found = next((m for m in client.inference.loaded(model) if m.version == number), None)
    if found is None:
        raise ValueError(
            f"model {model!r} version {number} is not loaded, so it has no config to keep; "
            "load it without --keep-config (`tessera serve-status` lists what is loaded)"
        )
    kept = found.config
    if set_only:
        if not found.HasField("requested"):
            raise ValueError(
                "this tesserad does not say which of the version's options were set and which are "
                "its defaults, so --keep-config --save would save its defaults too; give the options "
                "to save without --keep-config"
            )
        kept = found.requested
    # ListFields: those set, an `optional` one's explicit 0 included.
    fields = [field for field, _ in kept.ListFields()] if set_only else kept.DESCRIPTOR.fields
    config = {field.name: getattr(kept, field.name) for field in fields}
    # An ensemble's runtime is unspecified: its version's format decides.
    config["runtime"] = number_word(inference_pb2.Runtime, kept.runtime)
    if config["runtime"] == "unspecified":
        del config["runtime"]
    return config


def cmd_unload(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = picked_version(args)
    unloaded = client.inference.unload(args.model, version)
    if out.as_json:
        return out.json(list(unloaded))
    if not unloaded:
        # Answered only for versions whose failed load a retry pass took off the list: nothing was
        # listed to unload, and the daemon reset their count of failures in a row.
        return out.line(
            f"nothing{_of(args.model, version)} was loaded; the count of its failed loads is "
            "reset: its next failed load is retried at once"
        )
    for m in unloaded:
        out.line(f"unloaded {m.model} v{m.version}")


def cmd_serve_status(client: Client, args: argparse.Namespace, out: Output) -> None:
    loaded = client.inference.loaded(args.model)
    if out.as_json:
        return out.json(list(loaded))
    if not loaded:
        return out.line(
            f"nothing is loaded{_of(args.model)}; `tessera load MODEL` loads a version, as a predict does"
        )
    print_loaded(loaded, out)


def runtime_word(runtime: inference_pb2.Runtime.ValueType) -> str:
    """A loaded version's runtime as the table says it. The daemon fills in the runtime of every
    loaded version but an ensemble's, which runs on its members' and is sent unspecified."""
    if runtime == inference_pb2.RUNTIME_UNSPECIFIED:
        return "ensemble"
    return number_word(inference_pb2.Runtime, runtime)


def print_loaded(loaded: Sequence[inference_pb2.LoadedModel], out: Output) -> None:
    out.table(
        "loaded models",
        [
            "model",
            "version",
            "state",
            "runtime",
            "device",
            "instances",
            "max batch",
            "response cache",
            "memory",
            "loaded",
        ],
        [
            (
                m.model,
                m.version,
                number_word(inference_pb2.LoadState, m.state),
                runtime_word(m.config.runtime),
                m.config.device,
                m.config.instances,
                m.config.max_batch_size,
                "on" if m.config.response_cache else "off",
                size(m.memory_bytes),
                when(m.loaded_at),
            )
            for m in loaded
        ],
        whole=("model", "version"),
    )

"""`tessera models ...` and `tessera export onnx`: the model registry. Each command takes
(client, args, out) and prints its result."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tessera.cli.arguments import (
    UsageError,
    picked_version,
    refused_resume_in_cli_words,
    replaced_only_with_force,
)
from tessera.cli.inputs import load_inputs
from tessera.cli.output import Output, shape, size, transfer_progress, when, when_to_the_minute
from tessera.client import Client
from tessera.ensembles import fit_stacking, member_pair
from tessera.errors import TesseraError
from tessera.json_output import dumps, to_plain
from tessera.messages import counted, is_digits, load_toml
from tessera.models import (
    FORMAT_BY_SUFFIX,
    SUFFIX_BY_FORMAT,
    default_file_name,
    torch_file_advice,
    torch_file_kind,
)
from tessera.progress_line import byte_size
from tessera.rpc_commands import in_cli_words
from tessera.state_words import number_word
from tessera.tables import Word
from tessera.tensors import dtype_name
from tessera.transfer import is_download_directory
from tessera.v1 import common_pb2, registry_pb2


def cmd_models_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    models = list(client.models.list(prefix=args.prefix))
    if out.as_json:
        return out.json(models)
    if not models:
        if args.prefix:
            return out.line(f"no model's name starts with {args.prefix}")
        return out.line(
            "no models yet; `tessera models push MODEL FILE` registers one, as a job's register_as does"
        )
    out.table(
        "models",
        ["name", "latest", "versions", "aliases", "updated"],
        [
            (
                m.name,
                m.latest_version or "-",
                m.version_count,
                ", ".join(f"{a}={v}" for a, v in sorted(m.aliases.items()) if a != "latest") or "-",
                when(m.updated_at),
            )
            for m in models
        ],
        whole=("name", "latest"),
        unbroken=("aliases",),
    )


def cmd_models_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        return out.json(client.models.version(args.model, picked_version(args)))
    lineage = client.models.lineage(args.model, picked_version(args))
    version = lineage.version
    rows = version_rows(version)
    if lineage.derived:
        rows.append(("derived", derived_text(lineage.derived)))
    out.pairs(f"{version.model} v{version.version}", rows, whole=("sha256", "parent sha256"))


def derived_text(derived: Sequence[common_pb2.VersionRef]) -> str:
    """The versions whose lineage names a version as parent: "base v2, tuned v1"."""
    return ", ".join(
        f"{ref.model} v{ref.version}" for ref in sorted(derived, key=lambda r: (r.model, r.version))
    )


def version_rows(version: registry_pb2.ModelVersion) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("format", format_name(version)),
        ("size", byte_size(version.size_bytes)),
        ("sha256", version.sha256),
        ("parameters", f"{version.parameter_count:,}"),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("created", f"{when(version.created_at)} by {version.created_by or '-'}"),
    ]
    if version.description:
        rows.append(("description", version.description))
    rows += [(f"tag {k}", v) for k, v in sorted(version.tags.items())]
    for spec in version.signature.inputs:
        rows.append((f"input {spec.name}", f"{dtype_name(spec.dtype)} {shape(spec.shape)}"))
    for spec in version.signature.outputs:
        rows.append((f"output {spec.name}", f"{dtype_name(spec.dtype)} {shape(spec.shape)}"))
    rows += [(f"metric {k}", f"{v:.5g}") for k, v in sorted(version.metrics.items())]
    lineage = version.lineage
    if lineage.job_id:
        rows.append(("trained by", f"job {lineage.job_id}, run {lineage.run_id}"))
    elif lineage.run_id:
        # Pushed from a run (`models push --run`), or naming another tracker's.
        of = f" (experiment {lineage.experiment})" if lineage.experiment else ""
        rows.append(("run", f"{lineage.run_id}{of}"))
    for dataset in lineage.datasets:
        gone = f" (deleted, sha256 {dataset.sha256[:12]})" if dataset.deleted else ""
        rows.append(("dataset", f"{dataset.name}:{dataset.version}{gone}"))
    if lineage.parent_version:
        rows.append(("parent", parent_text(version)))
        # A row of its own, not inside the parent's: so the hash stays whole, as the version's.
        if lineage.parent_deleted.sha256:
            rows.append(("parent sha256", lineage.parent_deleted.sha256))
    return rows


def parent_text(version: registry_pb2.ModelVersion) -> str:
    """The lineage parent; a deleted one says so, since a model created again under its name
    may have a version of the same number that is another one (where a tesserad from before
    numbers went on across a delete deleted it; its sha256 tells them apart)."""
    lineage = version.lineage
    text = f"{lineage.parent_model or version.model} v{lineage.parent_version}"
    if not lineage.HasField("parent_deleted"):
        return text
    gone = lineage.parent_deleted
    return f"{text} (deleted {when(gone.deleted_at)})" if gone.HasField("deleted_at") else f"{text} (deleted)"


def cmd_models_versions(client: Client, args: argparse.Namespace, out: Output) -> None:
    versions = list(client.models.versions(args.model))
    if out.as_json:
        return out.json(versions)
    # Where no version has a lineage to name, the column would say nothing and take the room
    # that the description is cut to fit.
    sourced = any(source_text(v) != "-" for v in versions)

    def rows(created: Callable[[Any], Word]) -> list[tuple[Any, ...]]:
        return [
            (
                v.version,
                *((source_text(v),) if sourced else ()),
                number_word(registry_pb2.ArtifactFormat, v.format),
                size(v.size_bytes),
                ", ".join(v.aliases) or "-",
                created(v.created_at),
                v.description,
            )
            for v in versions
        ]

    out.table(
        f"{args.model} versions",
        ["version", *(("source",) if sourced else ()), "format", "size", "aliases", "created", "description"],
        rows(when),
        whole=("version", "source", "format", "size"),
        unbroken=("aliases",),
        # Cut rather than left out: at 80 columns, sizes of a few hundred KiB left no room for it.
        cut=("description",),
        narrower_rows=rows(when_to_the_minute),
    )


def source_text(version: registry_pb2.ModelVersion) -> str:
    """What made the version, from its lineage: the job that trained it, else the run it was
    logged with, else the version it was derived from ("from v3"); "-" for a plain push. Versions
    a sweep's trials registered differ in nothing else a listing shows."""
    lineage = version.lineage
    if lineage.job_id or lineage.run_id:
        return lineage.job_id or lineage.run_id
    if lineage.parent_version:
        model = (
            f"{lineage.parent_model} "
            if lineage.parent_model and lineage.parent_model != version.model
            else ""
        )
        return f"from {model}v{lineage.parent_version}"
    return "-"


# The newest versions a push looks through for its own bytes where the daemon does not say which
# versions hold them (a tesserad from before `same_bytes`): a note, not worth listing a model of
# thousands of versions after every push.
SAME_BYTES_SCAN = 200


def same_bytes(client: Client, version: registry_pb2.ModelVersion) -> tuple[list[int], int]:
    """The model's other versions whose artifact is `version`'s, by sha256, oldest first, and how
    many more there are: as the daemon's answer names them (the newest few), else among the newest
    `SAME_BYTES_SCAN` listed; none where they cannot be listed (the push is made, and a retry would
    register it again)."""
    if version.HasField("same_bytes"):
        named = sorted(version.same_bytes.versions)
        return named, version.same_bytes.count - len(named)
    try:
        newest = list(islice(client.models.versions(version.model, page_size=100), SAME_BYTES_SCAN))
    except TesseraError:
        return [], 0
    return sorted(v.version for v in newest if v.sha256 == version.sha256 and v.version != version.version), 0


def cmd_models_push(client: Client, args: argparse.Namespace, out: Output) -> None:
    # The SDK's own messages for these name its keyword arguments (format=, architecture=).
    suffix = Path(args.file).suffix.lower()
    artifact_format = args.format or FORMAT_BY_SUFFIX.get(suffix)
    if artifact_format is None and (kind := torch_file_kind(Path(args.file))) is not None:
        raise UsageError(
            torch_file_advice(Path(args.file), kind, "--spec SPEC.toml naming the [architecture] that builds")
        )
    if artifact_format is None:
        raise UsageError(
            f"{args.file}: cannot tell the format from the suffix; name the file .onnx or .safetensors, "
            "or pass --format"
        )
    if artifact_format == "safetensors" and not args.spec:
        raise UsageError(
            f"{args.file}: safetensors weights need --spec SPEC.toml with the [architecture] that built them"
        )
    architecture = None
    if args.spec:
        spec = load_toml(args.spec)
        architecture = spec.get("architecture", spec)
    version = client.models.push(
        args.model,
        args.file,
        format=artifact_format,
        architecture=architecture,
        set_alias=args.set_alias,
        description=args.description,
        progress=transfer_progress(out, f"pushing {Path(args.file).name}"),
        run_id=args.run,
    )
    if out.as_json:
        out.json(version)
    else:
        out.line(
            f"registered {version.model} v{version.version} ({byte_size(version.size_bytes)}, sha256 {version.sha256[:12]})"
        )
        if version.HasField("alias_moved"):
            print_alias_moved(out, version.alias_moved)
    warn(version.alias_moved.deployment_warnings)
    if not out.as_json:
        same, more = same_bytes(client, version)
        if same:
            listed = ", ".join(f"v{n}" for n in same) + (f" and {more:,} more" if more else "")
            out.line(
                f"  the same bytes as {listed} (sha256 equal): a version of its own "
                f"all the same; delete it with `tessera models rm {version.model} {version.version}` if it was not meant"
            )


def cmd_models_ensemble(client: Client, args: argparse.Namespace, out: Output) -> None:
    stacking = None
    if args.fit:
        if args.combine != "stacking":
            raise UsageError("--fit fits a stacking combiner; use it with --combine stacking")
        stacking = fit_stacking_on(client, args.members, args.fit, args.fit_target)
    version = client.models.register_ensemble(
        args.model,
        args.members,
        args.combine,
        weights=args.weights,
        stacking=stacking,
        set_alias=args.set_alias,
        description=args.description,
    )
    if out.as_json:
        out.json(version)
    else:
        out.line(
            f"registered {version.model} v{version.version}: {args.combine} of {', '.join(args.members)}"
        )
        if version.HasField("alias_moved"):
            print_alias_moved(out, version.alias_moved)
    warn(version.alias_moved.deployment_warnings)


def fit_stacking_on(client: Client, members: Sequence[str], path: str, target: str) -> dict[str, Any]:
    """A stacking combiner fitted on held-out rows: the .npz's inputs run through each member."""
    arrays = load_inputs(path)
    if target not in arrays:
        raise ValueError(
            f"{path} has no {target!r} array (the targets: class labels or scores); name it with --fit-target"
        )
    targets = arrays.pop(target)
    outputs = []
    for member in members:
        model, version = member_pair(member)
        (output,) = client.inference.predict(model, arrays, version=version).outputs.values()
        outputs.append(output)
    return fit_stacking(outputs, targets)


def cmd_models_alias(client: Client, args: argparse.Namespace, out: Output) -> None:
    if isinstance(args.version, str):
        # An alias stores a number: one set to another alias would not follow it when it moves.
        number = client.models.version(args.model, args.version).version
        raise UsageError(
            f"{args.version!r} is an alias, which points at v{number}; an alias points at a version "
            f"number, not at another alias: `tessera models alias {args.model} {args.alias} {number}`"
        )
    alias = client.models.set_alias(args.model, args.alias, args.version)
    if out.as_json:
        out.json(alias)
    else:
        out.line(f"{alias.model}: {alias.alias} -> v{alias.version}")
    warn(alias.deployment_warnings)


def cmd_models_aliases(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.history:
        return print_alias_history(client, args, out)
    if args.alias:
        raise UsageError(
            f"ALIAS ({args.alias}) picks the alias whose moves --history lists; without --history every "
            "alias is listed"
        )
    aliases = list(client.models.aliases(args.model))
    if out.as_json:
        return out.json(aliases)
    out.table(
        f"{args.model} aliases",
        ["alias", "version", "updated", "by"],
        [(a.alias, f"v{a.version}", when(a.updated_at), a.updated_by) for a in aliases],
    )


def print_alias_history(client: Client, args: argparse.Namespace, out: Output) -> None:
    """Each move of the model's aliases (or of one), newest first: what a deployment's alias route
    resolved to at some past moment is read here, as a revision records only the alias."""
    events = list(client.models.alias_history(args.model, args.alias))
    if out.as_json:
        return out.json(events)
    if not events:
        named = f"alias {args.alias} of {args.model}" if args.alias else args.model
        return out.line(f"{named}: no alias moves recorded")
    out.table(
        f"{args.model} alias history" + (f" of {args.alias}" if args.alias else ""),
        ["alias", "from", "to", "when", "by"],
        [
            (
                e.alias,
                f"v{e.from_version}" if e.from_version else "-",
                f"v{e.to_version}" if e.to_version else "-",
                when(e.time),
                e.actor,
            )
            for e in events
        ],
        whole=("from", "to"),
    )
    return None


def cmd_models_unalias(client: Client, args: argparse.Namespace, out: Output) -> None:
    client.models.delete_alias(args.model, args.alias)
    if out.as_json:
        return out.json({"model": args.model, "alias": args.alias, "deleted": True})
    out.line(f"{args.model}: alias {args.alias} deleted")


def cmd_models_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.version is not None:
        if args.force:
            # DeleteVersion has no force: what refuses it (an alias, the deployment) must be moved.
            raise UsageError(
                "--force deletes a whole model with its aliases and deployment; a version in use is "
                "freed by moving what uses it, as the refusal says"
            )
        # Read before the delete: the version's derived index goes with it.
        derived = client.models.lineage(args.model, args.version).derived
        client.models.delete_version(args.model, args.version)
        if out.as_json:
            return out.json(
                {
                    "model": args.model,
                    "version": args.version,
                    "deleted_versions": 1,
                    "derived": list(derived),
                }
            )
        out.line(f"deleted {args.model} v{args.version}")
        if derived:
            out.line(
                f"  derived from it: {derived_text(derived)}; their lineage keeps {args.model} v{args.version} "
                "as parent, marked deleted (`tessera models show` names it)"
            )
        return None
    deleted = client.models.delete(args.model, force=args.force)
    if out.as_json:
        return out.json({"model": args.model, "deleted_versions": deleted})
    out.line(f"deleted model {args.model} ({counted(deleted, 'version')})")


def cmd_models_deploy(client: Client, args: argparse.Namespace, out: Output) -> None:
    routes: dict[int | str, int] = {}
    for chosen, weight in args.routes:
        if chosen in routes:
            words = f"version {chosen}" if isinstance(chosen, int) else f"alias {chosen!r}"
            raise UsageError(f"route {words} is given twice; give it one route with the percents added")
        routes[chosen] = weight
    deployment = client.models.deploy(
        args.model,
        routes,
        shadow=args.shadow,
        shadow_percent=args.shadow_percent,
        comment=args.comment,
        expected_revision=args.expected_revision,
    )
    print_deployment(deployment, out)


def cmd_models_rollback(client: Client, args: argparse.Namespace, out: Output) -> None:
    print_deployment(client.models.rollback(args.model, expected_revision=args.expected_revision), out)


def cmd_models_deployments(client: Client, args: argparse.Namespace, out: Output) -> None:
    history = list(client.models.deployments(args.model))
    if out.as_json:
        out.json(history)
    elif not history:
        out.line(
            f"{args.model} was never deployed: requests without a version or alias go to its latest version"
        )
    else:
        print_history(args.model, history, out)
    if history:
        warn(history[0].warnings)


def print_history(model: str, history: list[registry_pb2.Deployment], out: Output) -> None:
    out.table(
        f"{model} deployments",
        ["revision", "routes", "shadow", "created", "by", "comment"],
        [
            (
                str(d.revision),
                routes_text(d),
                shadow_text(d),
                when(d.created_at),
                d.created_by,
                d.comment,
            )
            for d in history
        ],
    )


def warn(warnings: Sequence[str]) -> None:
    """The daemon's warnings of a deployment on stderr (after the answer, which also carries them
    with --json), one line each, in the CLI's words."""
    for warning in warnings:
        print(f"warning: {in_cli_words(warning)}", file=sys.stderr, flush=True)


def routes_text(deployment: registry_pb2.Deployment) -> str:
    """ "v2 90%, alias prod (v1 now) 10%": each route with the version an alias resolves to now
    ("-": to none)."""
    if deployment.undeployed:
        return "no deployment"
    return ", ".join(
        f"{target_text(r.WhichOneof('target'), r.version, r.alias, r.resolved_version)} {r.weight}%"
        for r in deployment.routes
    )


def shadow_text(deployment: registry_pb2.Deployment) -> str:
    shadow = deployment.shadow
    if not deployment.HasField("shadow") or not shadow.WhichOneof("target"):
        return ""
    target = target_text(shadow.WhichOneof("target"), shadow.version, shadow.alias, shadow.resolved_version)
    return f"{target} {shadow.percent}%"


def target_text(kind: str | None, version: int, alias: str, resolved: int) -> str:
    """ "v2", "v2 (deleted)", "alias prod (v1 now)", "alias prod (unset now)". A revision records the
    alias, not the version it resolved to when deployed: "now" keeps a past revision from reading
    as though it served the alias's version of today."""
    if kind == "alias":
        return f"alias {alias} ({f'v{resolved}' if resolved else 'unset'} now)"
    return f"v{version}" if resolved else f"v{version} (deleted)"


def print_deployment(deployment: registry_pb2.Deployment, out: Output) -> None:
    if out.as_json:
        return out.json(deployment)
    if deployment.undeployed:
        return out.line(
            f"{deployment.model}: no deployment (revision {deployment.revision}: {deployment.comment}); "
            "requests without a version or alias go to the latest version"
        )
    rows = []
    for route in deployment.routes:
        target = f"alias {route.alias}" if route.WhichOneof("target") == "alias" else f"v{route.version}"
        rows.append(
            (target, f"{route.weight}%", f"v{route.resolved_version}" if route.resolved_version else "-")
        )
    if deployment.HasField("shadow") and deployment.shadow.WhichOneof("target"):
        shadow = deployment.shadow
        target = f"alias {shadow.alias}" if shadow.WhichOneof("target") == "alias" else f"v{shadow.version}"
        rows.append((f"shadow {target}", f"{shadow.percent}% copied", f"v{shadow.resolved_version}"))
    if deployment.rolled_back_from:
        # A rollback says what it restored, as its undeployed form does.
        out.line(f"{deployment.model}: {deployment.comment}")
    out.table(
        f"{deployment.model} deployment revision {deployment.revision}",
        ["route", "traffic", "resolves to"],
        rows,
        whole=("route", "resolves to"),
    )


def cmd_models_changes(client: Client, args: argparse.Namespace, out: Output) -> None:
    shown = 0
    for change in client.models.watch_changes(from_seq=args.from_seq, follow=args.follow):
        shown += 1
        if out.as_json:
            print(dumps(change_document(change)), flush=True)
        else:
            out.line(change_line(change))
    if not shown and not out.as_json:
        out.line(f"no changes from seq {max(args.from_seq, 1)} on")


# The version fields a change's serving state leaves out (ModelServingState.versions): printed
# at their zero value, they read as facts about the version.
LEFT_OUT_OF_CHANGES = ("params", "metrics", "description", "tags", "lineage")


def change_document(change: registry_pb2.RegistryChange) -> dict[str, Any]:
    """The change as --json prints it: its versions without the fields it does not carry."""
    document: dict[str, Any] = to_plain(change)
    for version in document.get("state", {}).get("versions", []):
        for field in LEFT_OUT_OF_CHANGES:
            version.pop(field, None)
    return document


def change_line(change: registry_pb2.RegistryChange) -> str:
    """One change in words: "7  2026-12-04 10:00:00  linear: alias moved; latest v2, production=v2,
    deployed production 100% (v2)"."""
    kinds = ", ".join(number_word(registry_pb2.ChangeKind, kind).replace("_", " ") for kind in change.kinds)
    head = f"{change.seq}  {when(change.time)}  {change.model}: {kinds}"
    if not change.HasField("state"):
        return head
    state = change.state
    parts = [f"latest v{state.latest_version}" if state.latest_version else "no versions"]
    parts += [f"{alias}=v{version}" for alias, version in sorted(state.aliases.items())]
    if state.HasField("deployment") and not state.deployment.undeployed:
        routes = ", ".join(
            f"{route.alias or f'v{route.version}'} {route.weight}% (v{route.resolved_version})"
            for route in state.deployment.routes
        )
        parts.append(f"deployed {routes}")
        shadow = state.deployment.shadow
        if shadow.WhichOneof("target"):
            parts.append(f"shadow {shadow.alias or f'v{shadow.version}'} {shadow.percent}%")
    return f"{head}; {', '.join(parts)}"


def format_name(version: registry_pb2.ModelVersion) -> str:
    return number_word(registry_pb2.ArtifactFormat, version.format)


def architecture_text(version: registry_pb2.ModelVersion) -> str:
    """The architecture in one line, "mlp input_shape [4], output_size 2, hidden_sizes [8]";
    "-" for a version without one."""
    if not version.HasField("architecture"):
        return "-"
    plain = to_plain(version.architecture)
    family = version.architecture.WhichOneof("family") or ""
    fields = {key: value for key, value in plain.items() if key != family} | plain.get(family, {})
    set_fields = [f"{key} {value}" for key, value in fields.items() if value not in ("", 0, [], {})]
    return f"{family} {', '.join(set_fields)}".strip()


def artifact_differences(diff: registry_pb2.CompareVersionsResponse) -> dict[str, dict[str, Any]]:
    """What tells the two versions' artifacts apart beside what the daemon compares: format,
    description, architecture and sha256, each that differs as {"a": ..., "b": ...}."""
    a, b = diff.a, diff.b
    values = {
        "format": (format_name(a), format_name(b)),
        "description": (a.description, b.description),
        "architecture": (
            to_plain(a.architecture) if a.HasField("architecture") else None,
            to_plain(b.architecture) if b.HasField("architecture") else None,
        ),
        "sha256": (a.sha256, b.sha256),
    }
    return {key: {"a": va, "b": vb} for key, (va, vb) in values.items() if va != vb}


def cmd_models_compare(client: Client, args: argparse.Namespace, out: Output) -> None:
    diff = client.models.compare(args.model, args.a, args.b)
    if out.as_json:
        return out.json(to_plain(diff) | {"artifact_differences": artifact_differences(diff)})
    title = f"{args.model}: v{diff.a.version} vs v{diff.b.version}"
    rows: list[tuple[str, str, str, str]] = []
    for m in diff.metrics:
        a = f"{m.a:.5g}" if m.present_a else "-"
        b = f"{m.b:.5g}" if m.present_b else "-"
        rows.append((f"metric {m.key}", a, b, f"{m.delta:+.5g}" if m.present_a and m.present_b else ""))
    for p in diff.params:
        rows.append((f"param {p.key}", p.a if p.present_a else "-", p.b if p.present_b else "-", ""))
    for item in diff.lineage:
        # The whole spec as proto JSON: its fields are the param rows above; --json keeps it.
        # Without param rows it stays: a spec field that is no param (run_name, tags) or a version
        # stored without its spec's params differs by it alone.
        if item.key != "job_spec" or not diff.params:
            rows.append((f"lineage {item.key}", item.a or "-", item.b or "-", ""))
    rows.append(
        ("size", byte_size(diff.a.size_bytes), byte_size(diff.b.size_bytes), f"{diff.size_delta:+,} B")
    )
    rows.append(
        ("signature", "", "", "same" if diff.same_signature else "; ".join(diff.signature_differences))
    )
    va, vb = diff.a, diff.b
    rows.append(("format", format_name(va), format_name(vb), ""))
    rows.append(("description", va.description or "-", vb.description or "-", ""))
    rows.append(("architecture", architecture_text(va), architecture_text(vb), ""))
    same = "same bytes" if va.sha256 == vb.sha256 else "differ"
    rows.append(("sha256", va.sha256[:12], vb.sha256[:12], same))
    out.table(title, ["", "a", "b", "b - a"], rows)


FORMAT_WORDS = {
    registry_pb2.ARTIFACT_FORMAT_SAFETENSORS: "a safetensors",
    registry_pb2.ARTIFACT_FORMAT_ONNX: "an ONNX",
    registry_pb2.ARTIFACT_FORMAT_ENSEMBLE: "an ensemble",
}
"""Each artifact format with its article, as a message names it."""


def cmd_models_download(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.path and args.output:
        raise UsageError(f"name the file once: PATH ({args.path}) or -o/--output ({args.output}), not both")
    picked = picked_version(args)
    if args.path and is_digits(args.path) and picked is None and not Path(args.path).exists():
        # `models alias MODEL NAME N` takes a version there: N would get the latest version.
        raise UsageError(
            f"{args.path!r} would be the file written; for version {args.path}, pass --version "
            f"{args.path} (for a file named {args.path}, ./{args.path})"
        )
    given_path = args.path or args.output
    # Resolved first: the file's name must match the artifact's format, and the number pins
    # the version downloaded to the one checked.
    resolved = client.models.version(args.model, picked)
    suffix = SUFFIX_BY_FORMAT.get(resolved.format, "")
    default = default_file_name(resolved)
    # The SDK's rule, on the text as given: Path would drop the "/" that says "a directory".
    into_directory = bool(given_path) and is_download_directory(given_path)
    path = Path(given_path) / default if into_directory else Path(given_path or default)
    given = path.suffix.lower()
    if suffix and given in SUFFIX_BY_FORMAT.values() and given != suffix:
        raise UsageError(
            f"{path} names a {given} file, but {resolved.model} v{resolved.version} is "
            f"{FORMAT_WORDS[resolved.format]} "
            f"artifact; name it {suffix} (or leave the name out for {default})"
        )
    with replaced_only_with_force(), refused_resume_in_cli_words():
        version = client.models.download(
            resolved.model,
            given_path if into_directory else path,
            resolved.version,
            progress=transfer_progress(out, f"downloading {args.model}"),
            overwrite=args.force,
            resume=args.resume,
        )
    if out.as_json:
        return out.json({"path": str(path), "version": to_plain(version)})
    out.line(
        f"wrote {path}: {version.model} v{version.version}, {byte_size(version.size_bytes)}, sha256 verified"
    )


def cmd_export_onnx(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = client.models.export_onnx(
        args.model,
        picked_version(args),
        opset=args.opset,
        conv4d=args.conv4d,
        set_alias=args.set_alias,
        description=args.description,
    )
    if out.as_json:
        out.json(result)
    else:
        print_export(out, result, args.description)
    warn(result.alias_moved.deployment_warnings)
    if args.alias is not None and args.set_alias is None:
        # --alias once moved the alias onto the export: a script written then is told, on
        # stderr so that --json stays one document, that it no longer does.
        exported = result.version
        print(
            f"note: exported {exported.model} v{exported.version} from {args.alias}'s "
            f"v{exported.lineage.parent_version}; {args.alias} was not moved (--alias picks the "
            f"version exported; add --set-alias {args.alias} to move it)",
            file=sys.stderr,
            flush=True,
        )


def print_export(out: Output, result: registry_pb2.ExportOnnxResponse, description: str) -> None:
    done = "already exported as" if result.reused else "exported"
    out.line(
        f"{done} {result.version.model} v{result.version.version} (onnx opset {result.opset}, conv4d "
        f"{result.conv4d}, max |onnx - torch| {result.max_abs_error:.2e})"
    )
    if result.reused and description and description != result.version.description:
        out.line(
            f"description not applied: v{result.version.version} keeps its own "
            f"({result.version.description!r}); versions are immutable"
        )
    if result.HasField("alias_moved"):
        print_alias_moved(out, result.alias_moved)


def print_alias_moved(out: Output, moved: registry_pb2.AliasEvent) -> None:
    before = f"v{moved.from_version}" if moved.from_version else "(new)"
    out.line(f"alias {moved.alias}: {before} -> v{moved.to_version}")

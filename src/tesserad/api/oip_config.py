"""Triton model configurations: the one ModelConfig answers for a version (model_config_of), and
the one RepositoryModelLoad's `config` parameter gives (tritonclient's `load_model(name,
config=json)`), read as Triton reads it (protobuf's JSON mapping of inference.ModelConfig:
snake_case or camelCase names, 64-bit integers as numbers or strings, enums by name), and mapped
onto the ServingConfig a LoadModel would take.

As in Triton, the JSON is the whole configuration: a field it leaves out takes its default.
The fields taken, and what they set:

    name                                                    must be the model's name
    platform, backend                                       runtime: onnxruntime_onnx/onnxruntime -> onnx,
                                                            pytorch (or Triton's pytorch_libtorch)/pytorch
                                                            -> torch
    version_policy                                          the versions loaded (VersionPolicy): latest N
                                                            (N > 1), specific, all; latest 1, Triton's
                                                            default, is the versions requests are routed to
    max_batch_size                                          max_batch_size (absent: the default; 0,
                                                            Triton's "no batching", is refused: 1 is,
                                                            unless the version cannot batch, as
                                                            ModelConfig then says)
    dynamic_batching.max_queue_delay_microseconds           max_queue_delay_us (dynamic_batching given
                                                            without it: 0, as Triton reads it;
                                                            dynamic_batching absent: the default)
    dynamic_batching.default_queue_policy.max_queue_size    max_queue_size (absent: the default; 0,
                                                            Triton's unbounded queue, is refused)
    dynamic_batching.default_queue_policy.allow_timeout_override   nothing (`timeout` always applies)
    dynamic_batching.preferred_batch_size                   nothing: batches grow to max_batch_size (a
                                                            WARNING says so unless it is [max_batch_size])
    instance_group (at most one group)                      .count -> instances, .kind and .gpus -> device
                                                            (KIND_CPU: cpu; KIND_GPU or gpus [N]: cuda:N)
    response_cache.enable                                   response_cache
    parameters.intra_op_thread_count.string_value           intra_op_threads (the name Triton's
                                                            onnxruntime backend reads)
    parameters.inter_op_thread_count, execution_mode "0"    nothing: onnxruntime runs sequentially, as
                                                            Triton's default execution_mode 0, with no
                                                            inter-op threads
    optimization.input_pinned_memory, output_pinned_memory, nothing: tuning of Triton's own copies and
    gather_kernel_buffer_threshold, eager_batching          of TensorRT, which tesserad does not make
    default_model_filename                                  nothing: a version is one registered artifact
    model_transaction_policy.decoupled                      false only: one response per request
    input, output                                           nothing: must be the version's signature
    model_warmup                                            warmup_runs: the 1-row entry's count (given
                                                            without one: 0); an entry of more rows
                                                            (count 1) is the max_batch_size batch
                                                            tesserad warms up first; inputs must be
                                                            the signature's samples, as ModelConfig
                                                            gives them

So the config ModelConfig answers loads back as it is, and with a field changed, and so does
the config Triton itself answers for a model. The fields taken without effect are named in an
INFO log line. Any other field is refused, naming it: ignoring it would load something other than
what was asked for. tesserad always batches dynamically up to max_batch_size, so dynamic_batching
only carries its delay and queue size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message

from tesserad.client_json import parse_client_json
from tesserad.errors import InvalidArgument
from tesserad.oip import model_config_pb2 as mc
from tesserad.serving.open_inference import (
    BACKENDS,
    MAX_POLICY_VERSIONS,
    OIP_NAME_BY_DTYPE,
    PLATFORMS,
    RepositoryConfig,
    VersionPolicy,
)
from tesserad.serving.pool import CONFIG_LIMITS, RuntimeChoice, ServingConfig, warmup_batches
from tesserad.serving.service import VersionDescription
from tesserad.serving.signature import Signature, TensorSpec, sample_is_random

log = logging.getLogger(__name__)

# An ensemble runs on its members' runtimes: the version's format decides, as without a platform.
# pytorch_libtorch (Triton's TorchScript) is taken too: configs written for Triton name it.
_RUNTIME_BY_PLATFORM: Mapping[str, RuntimeChoice] = {
    "onnxruntime_onnx": "onnx",
    "pytorch": "torch",
    "pytorch_libtorch": "torch",
    "ensemble": "",
}
_RUNTIME_BY_BACKEND: Mapping[str, RuntimeChoice] = {"onnxruntime": "onnx", "pytorch": "torch"}
# message type -> the fields of it that are taken (others set are refused).
_TAKEN: Mapping[str, frozenset[str]] = {
    mc.ModelConfig.DESCRIPTOR.full_name: frozenset(
        {
            "name",
            "platform",
            "backend",
            "version_policy",
            "max_batch_size",
            "dynamic_batching",
            "instance_group",
            "response_cache",
            "parameters",
            "input",
            "output",
            "model_warmup",
            "optimization",
            "default_model_filename",
            "model_transaction_policy",
        }
    ),
    mc.ModelVersionPolicy.DESCRIPTOR.full_name: frozenset({"latest", "all", "specific"}),
    mc.ModelVersionPolicy.Latest.DESCRIPTOR.full_name: frozenset({"num_versions"}),
    mc.ModelVersionPolicy.All.DESCRIPTOR.full_name: frozenset(),
    mc.ModelVersionPolicy.Specific.DESCRIPTOR.full_name: frozenset({"versions"}),
    mc.ModelOptimizationPolicy.DESCRIPTOR.full_name: frozenset(
        {"input_pinned_memory", "output_pinned_memory", "gather_kernel_buffer_threshold", "eager_batching"}
    ),
    mc.ModelOptimizationPolicy.PinnedMemoryBuffer.DESCRIPTOR.full_name: frozenset({"enable"}),
    mc.ModelTransactionPolicy.DESCRIPTOR.full_name: frozenset({"decoupled"}),
    mc.ModelDynamicBatching.DESCRIPTOR.full_name: frozenset(
        {"max_queue_delay_microseconds", "default_queue_policy", "preferred_batch_size"}
    ),
    mc.ModelQueuePolicy.DESCRIPTOR.full_name: frozenset({"max_queue_size", "allow_timeout_override"}),
    mc.ModelInstanceGroup.DESCRIPTOR.full_name: frozenset({"name", "kind", "count", "gpus"}),
    mc.ModelResponseCache.DESCRIPTOR.full_name: frozenset({"enable"}),
    mc.ModelWarmup.DESCRIPTOR.full_name: frozenset({"name", "batch_size", "count", "inputs"}),
}
# Fields compared whole with what ModelConfig answers for the version, not walked.
_COMPARED = frozenset({"parameters", "input", "output", "inputs"})
_CONFIG_DTYPES = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BF16": mc.TYPE_BF16,
    "BYTES": mc.TYPE_STRING,
}
_PARAMETERS = frozenset({"intra_op_thread_count", "inter_op_thread_count", "execution_mode"})
# Fields taken without effect (named in the INFO line a load with them logs), and why.
_NO_EFFECT = {
    "optimization": "tunes Triton's pinned-memory copies and TensorRT, which tesserad does not make",
    "default_model_filename": "a version is the one artifact the registry holds",
    "model_transaction_policy": "decoupled false: tesserad answers each request once",
    "parameters.inter_op_thread_count": "onnxruntime runs sequentially (execution_mode 0), with no "
    "inter-op threads",
    "parameters.execution_mode": "0, sequential: how tesserad runs onnxruntime",
}
# What ModelConfig says of the version it describes: a config read back and loaded again holds
# them, so a load passes over them.
_DESCRIBING = frozenset({"tessera_version", "tessera_traffic_split"})
TAKEN_FIELDS = (
    "name, platform, backend, version_policy, max_batch_size, dynamic_batching.max_queue_delay_microseconds, "
    "dynamic_batching.default_queue_policy.max_queue_size, instance_group[0].name/count/kind/gpus, "
    "response_cache.enable, parameters.intra_op_thread_count, and input, output and model_warmup "
    "as ModelConfig gives them; taken without effect: dynamic_batching.preferred_batch_size and "
    "default_queue_policy.allow_timeout_override, parameters.inter_op_thread_count and execution_mode, "
    "optimization's pinned-memory fields, gather_kernel_buffer_threshold and eager_batching, "
    "default_model_filename, and model_transaction_policy.decoupled false; any other field is "
    "refused unless it is a number, string or flag at its default, which JSON reads as left out"
)


def serving_config_of(
    text: str, model: str, described: Callable[[VersionPolicy | None], Sequence[VersionDescription]]
) -> RepositoryConfig:
    """The ServingConfig the `config` parameter `text` asks `model` to load with, and the
    versions it asks for (None: those requests are routed to); InvalidArgument naming the field
    for JSON that is not a model configuration, sets what tesserad cannot do, or differs from the
    versions loaded (`described(policy)`, asked only when a field needs them) in what a config
    cannot change."""
    document = parse_client_json(
        text, "parameter 'config'", "no model configuration nests so deep: send a Triton model configuration"
    )
    if not isinstance(document, dict):
        raise InvalidArgument("parameter 'config' must be a JSON object (a Triton model configuration)")
    config = mc.ModelConfig()
    try:
        json_format.ParseDict(document, config)
    except json_format.ParseError as err:
        # protobuf's message goes on to list every field of the message, most of them refused here.
        reason = str(err).partition("\n")[0]
        raise InvalidArgument(
            f"parameter 'config' is not a model configuration tesserad takes: {reason} (it takes {TAKEN_FIELDS})"
        ) from None
    _refuse_untaken(config, "")
    if config.model_transaction_policy.decoupled:
        raise InvalidArgument(
            "config field 'model_transaction_policy.decoupled' is true; tesserad answers every request "
            "with one response (no model is decoupled): set it false or leave it out"
        )
    versions_asked = _version_policy(config.version_policy) if config.HasField("version_policy") else None
    _refuse_zero(
        document,
        ("dynamic_batching", "default_queue_policy", "max_queue_size"),
        "Triton's 0 is an unbounded queue, and tesserad's is always bounded: give a size",
    )
    if config.name and config.name != model:
        raise InvalidArgument(
            f"config field 'name' is {config.name!r}, but the model loaded is {model!r}: leave it out or make it match"
        )
    versions = described(versions_asked) if _needs_versions(document, config) else ()
    if any(v.signature.batchable for v in versions) or not versions:
        _refuse_zero(
            document, ("max_batch_size",), "Triton's 0 is a model without batching: give 1 to turn it off"
        )
    for version in versions:
        _check_signature(config, version)
        if config.platform == "ensemble" and version.config.runtime != "ensemble":
            raise InvalidArgument(
                f"config field 'platform' is 'ensemble', but {model} version {version.version} is not an "
                "ensemble: leave platform out or name the version's runtime"
            )
    batching = config.dynamic_batching
    policy = batching.default_queue_policy
    groups = config.instance_group
    if len(groups) > 1:
        raise InvalidArgument(
            f"config field 'instance_group' has {len(groups)} groups; tesserad runs a version on one device: "
            "give one group"
        )
    instances, device = _placement(groups[0]) if groups else (0, "")
    no_effect = [field for field in _NO_EFFECT if _given(document, tuple(field.split(".")))]

    def loaded(applied: Sequence[int]) -> None:
        if no_effect:
            log.info(
                "a repository load's config has fields taken without effect",
                extra={"model": model, "fields": {field: _NO_EFFECT[field] for field in no_effect}},
            )
        _warn_preferred(model, config, applied)

    serving = ServingConfig(
        runtime=_runtime(config.platform, config.backend),
        device=device,
        instances=_within("instance_group[0].count", instances, "instances"),
        max_batch_size=_within("max_batch_size", config.max_batch_size, "max_batch_size"),
        # Triton's delay is 0 when dynamic_batching leaves it out, as protobuf's JSON writes a 0.
        max_queue_delay_us=_within(
            "dynamic_batching.max_queue_delay_microseconds",
            batching.max_queue_delay_microseconds,
            "max_queue_delay_us",
        )
        if _given(document, ("dynamic_batching",))
        else None,
        max_queue_size=_within(
            "dynamic_batching.default_queue_policy.max_queue_size", policy.max_queue_size, "max_queue_size"
        ),
        warmup_runs=_warmup_runs(config.model_warmup) if _given(document, ("model_warmup",)) else None,
        intra_op_threads=_intra_op_threads(config.parameters),
        response_cache=config.response_cache.enable
        if _given(document, ("response_cache", "enable"))
        else None,
    )
    return RepositoryConfig(
        serving, versions_asked, lambda applied: _check_preferred(config, applied), loaded
    )


def _version_policy(given: mc.ModelVersionPolicy) -> VersionPolicy | None:
    """The VersionPolicy of a config's version_policy; None for Triton's default (latest 1), which
    loads the versions requests are routed to, as a load without it."""
    choice = given.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(every=True)
    if choice == "specific":
        versions = tuple(given.specific.versions)
        if not versions:
            raise InvalidArgument(
                "config field 'version_policy.specific.versions' is empty: list the versions to load"
            )
        if len(versions) > MAX_POLICY_VERSIONS:
            # Refused as given, before any work: a list repeating a version is read as long as it is.
            raise InvalidArgument(
                f"config field 'version_policy.specific.versions' lists {len(versions)} versions; one load "
                f"serves at most {MAX_POLICY_VERSIONS}: list fewer"
            )
        if min(versions) < 1:
            raise InvalidArgument(
                f"config field 'version_policy.specific.versions' must hold versions of at least 1, got {min(versions)}"
            )
        return VersionPolicy(specific=tuple(sorted(set(versions))))
    count = given.latest.num_versions
    if count > MAX_POLICY_VERSIONS:
        raise InvalidArgument(
            f"config field 'version_policy.latest.num_versions' is {count}; one load serves at most "
            f"{MAX_POLICY_VERSIONS} versions: give fewer"
        )
    # Triton reads 0 (and a version_policy choosing nothing) as latest 1.
    return VersionPolicy(latest=count) if count > 1 else None


def _check_preferred(config: mc.ModelConfig, applied: Sequence[int]) -> None:
    """Refuse dynamic_batching.preferred_batch_size sizes Triton refuses: outside 1..the
    max_batch_size the load applies (`applied`: each version's)."""
    most = min(applied, default=config.max_batch_size or CONFIG_LIMITS["max_batch_size"][1])
    for size in config.dynamic_batching.preferred_batch_size:
        if not 1 <= size <= most:
            raise InvalidArgument(
                f"config field 'dynamic_batching.preferred_batch_size' holds {size}; each size must be in "
                f"1..{most} (the max_batch_size the load applies)"
            )


def _warn_preferred(model: str, config: mc.ModelConfig, applied: Sequence[int]) -> None:
    """Warn that preferred sizes other than the max_batch_size loaded (`applied`) are not aimed at."""
    sizes = list(config.dynamic_batching.preferred_batch_size)
    if not sizes or all(sizes == [most] for most in applied):
        return  # what tesserad does: batches grow to max_batch_size
    log.warning(
        "dynamic_batching.preferred_batch_size is not honoured: tesserad batches up to max_batch_size "
        "rows, as many as are queued (within max_queue_delay_microseconds while the model is idle), "
        "without aiming at preferred sizes",
        extra={"model": model, "preferred_batch_size": sizes, "max_batch_size": sorted(set(applied))},
    )


def model_config_of(
    described: VersionDescription,
    split: tuple[tuple[int, int], ...] = (),
    policy: VersionPolicy | None = None,
) -> mc.ModelConfig:
    """The Triton model configuration of a version, as ModelConfig answers it. A Triton config
    describes a model, here one version of it: the parameters (a map Triton's clients pass
    through) name that version and, under a canary deployment (`split`: (version, percent)),
    how requests naming no version are split, as "1:90,2:10". `policy`: the version_policy the
    model was loaded with (None: none, left out)."""
    config = described.config
    signature = described.signature
    kind = mc.ModelInstanceGroup.KIND_CPU if config.device == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    gpus = [] if config.device == "cpu" else [int(config.device.partition(":")[2] or 0)]
    return mc.ModelConfig(
        name=described.model,
        platform=PLATFORMS[config.runtime],
        backend=BACKENDS[config.runtime],
        version_policy=_policy_message(policy) if policy is not None else None,
        max_batch_size=config.max_batch_size if signature.batchable else 0,
        response_cache=mc.ModelResponseCache(enable=config.response_cache),
        input=_inputs(signature),
        output=_outputs(signature),
        dynamic_batching=mc.ModelDynamicBatching(
            # No preferred_batch_size: as Triton without one, batches grow to max_batch_size.
            max_queue_delay_microseconds=config.max_queue_delay_us,
            # The queue's bound (refused beyond it), and the `timeout` parameter, which
            # drops a request still queued when it passes; no timeout without it.
            default_queue_policy=mc.ModelQueuePolicy(
                timeout_action=mc.ModelQueuePolicy.REJECT,
                allow_timeout_override=True,
                max_queue_size=config.max_queue_size,
            ),
        )
        if signature.batchable and config.max_batch_size > 1
        else None,
        instance_group=[mc.ModelInstanceGroup(count=config.instances, kind=kind, gpus=gpus)],
        # As Triton's onnxruntime backend names it; 0 lets onnxruntime choose.
        parameters={
            "intra_op_thread_count": mc.ModelParameter(string_value=str(config.intra_op_threads)),
            "tessera_version": mc.ModelParameter(string_value=str(described.version)),
            **(
                {
                    "tessera_traffic_split": mc.ModelParameter(
                        string_value=",".join(f"{v}:{w}" for v, w in split)
                    )
                }
                if split
                else {}
            ),
        },
        model_warmup=[
            mc.ModelWarmup(
                name=f"{rows} row{'s' if rows > 1 else ''}",
                batch_size=rows,
                count=runs,
                inputs=_warmup_inputs(signature),
            )
            for rows, runs in warmup_batches(signature, config)
        ],
    )


def _policy_message(policy: VersionPolicy) -> mc.ModelVersionPolicy:
    if policy.every:
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    if policy.specific:
        return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=policy.specific))
    return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest))


def _dims(signature: Signature, spec: TensorSpec) -> list[int]:
    # With max_batch_size > 0, Triton's dims leave out the batch dimension.
    return list(spec.shape[1:] if signature.batchable else spec.shape)


def _data_type(spec: TensorSpec) -> mc.DataType.ValueType:
    return _CONFIG_DTYPES[OIP_NAME_BY_DTYPE[spec.dtype]]


def _inputs(signature: Signature) -> list[mc.ModelInput]:
    return [
        mc.ModelInput(name=s.name, data_type=_data_type(s), dims=_dims(signature, s))
        for s in signature.inputs
    ]


def _outputs(signature: Signature) -> list[mc.ModelOutput]:
    return [
        mc.ModelOutput(name=s.name, data_type=_data_type(s), dims=_dims(signature, s))
        for s in signature.outputs
    ]


def _warmup_inputs(signature: Signature) -> dict[str, mc.ModelWarmup.Input]:
    """As sample_inputs makes them: other dynamic dimensions 1, floats random, others zeros."""
    samples = {}
    for spec in signature.inputs:
        sample = mc.ModelWarmup.Input(
            data_type=_data_type(spec), dims=[max(d, 1) for d in _dims(signature, spec)]
        )
        # One of a oneof: setting either field to False would still pick it.
        if sample_is_random(spec.dtype):
            sample.random_data = True
        else:
            sample.zero_data = True
        samples[spec.name] = sample
    return samples


def _needs_versions(document: Mapping[str, object], config: mc.ModelConfig) -> bool:
    """Whether the config has a field checked against the versions loaded."""
    return (
        bool(config.input or config.output or config.model_warmup)
        or config.platform == "ensemble"
        or _is_zero(document, ("max_batch_size",))
    )


def _check_signature(config: mc.ModelConfig, described: VersionDescription) -> None:
    """InvalidArgument naming the first of input, output and model_warmup's inputs that is given
    and differs from what ModelConfig answers for the version."""
    signature = described.signature
    version = f"{described.model} version {described.version}"
    for field, given, has in (
        ("input", list(config.input), _inputs(signature)),
        ("output", list(config.output), _outputs(signature)),
    ):
        if given and given != has:
            raise InvalidArgument(
                f"config field {field!r} is {_tensors(given)}, but {version} has {_tensors(has)}: a config "
                f"cannot change a model's signature; leave {field} out or give it as ModelConfig does"
            )
    samples = _warmup_inputs(signature)
    for index, warmup in enumerate(config.model_warmup):
        if dict(warmup.inputs) != samples:
            raise InvalidArgument(
                f"config field 'model_warmup[{index}].inputs' differs from the samples of {version}'s "
                "signature, which tesserad warms up on: leave model_warmup out or give its inputs "
                "as ModelConfig does"
            )


def _tensors(tensors: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput]) -> str:
    return ", ".join(
        f"{t.name} {mc.DataType.Name(t.data_type).removeprefix('TYPE_')} {list(t.dims)}" for t in tensors
    )


def _warmup_runs(warmups: Sequence[mc.ModelWarmup]) -> int:
    """warmup_runs from model_warmup: its 1-row entry's count, 0 without one."""
    runs = 0
    for index, warmup in enumerate(warmups):
        if warmup.batch_size < 1 or (warmup.batch_size > 1 and warmup.count != 1):
            raise InvalidArgument(
                f"config field 'model_warmup[{index}]' is {warmup.batch_size} rows {warmup.count} times; "
                "tesserad warms up with 1 row `count` times (warmup_runs), after one batch of "
                "max_batch_size rows (count 1)"
            )
        if warmup.batch_size == 1:
            if runs:
                raise InvalidArgument(
                    f"config field 'model_warmup[{index}]' is a second 1-row entry: give one, its count "
                    "is the warm-up runs"
                )
            runs = _within(f"model_warmup[{index}].count", warmup.count, "warmup_runs")
    return runs


def _refuse_untaken(message: Message, path: str) -> None:
    """InvalidArgument naming the first field set in `message` (at `path`) that is not taken."""
    taken = _TAKEN[message.DESCRIPTOR.full_name]
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if field.name not in taken:
            raise InvalidArgument(
                f"config field {where!r} is not supported by tesserad, which takes {TAKEN_FIELDS}: remove it"
            )
        if field.name in _COMPARED:
            continue
        if field.message_type is not None:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                suffix = f"[{index}]" if field.is_repeated else ""
                _refuse_untaken(item, f"{where}{suffix}.")


def _refuse_zero(document: Mapping[str, object], path: tuple[str, ...], meaning: str) -> None:
    """InvalidArgument for a 0 given at `path`, which Triton reads otherwise than tesserad's
    "the default": protobuf's parser cannot tell it from absent."""
    if _is_zero(document, path):
        raise InvalidArgument(
            f"config field {'.'.join(path)!r} is 0; {meaning}, or leave it out for the default"
        )


def _is_zero(document: Mapping[str, object], path: tuple[str, ...]) -> bool:
    value = _value(document, path)
    return value is not None and not isinstance(value, bool) and value in (0, "0")


def _given(document: Mapping[str, object], path: tuple[str, ...]) -> bool:
    """Whether the document has `path`, even as a value protobuf's parser keeps no trace of
    (an empty object or list, a 0)."""
    return _value(document, path) is not None


def _value(document: Mapping[str, object], path: tuple[str, ...]) -> object:
    """The value at `path` (snake_case or camelCase names), None where absent."""
    value: object = document
    for name in path:
        if not isinstance(value, Mapping):
            return None
        camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
        value = value.get(name, value.get(camel))
    return value


def _runtime(platform: str, backend: str) -> RuntimeChoice:
    for field, value, runtimes in (
        ("platform", platform, _RUNTIME_BY_PLATFORM),
        ("backend", backend, _RUNTIME_BY_BACKEND),
    ):
        if value and value not in runtimes:
            raise InvalidArgument(
                f"config field {field!r} is {value!r}; tesserad runs {' or '.join(map(repr, runtimes))}"
            )
    by_platform = _RUNTIME_BY_PLATFORM.get(platform, "")
    by_backend = _RUNTIME_BY_BACKEND.get(backend, "")
    if by_platform and by_backend and by_platform != by_backend:
        raise InvalidArgument(f"config fields 'platform' ({platform!r}) and 'backend' ({backend!r}) disagree")
    return by_platform or by_backend


def _placement(group: mc.ModelInstanceGroup) -> tuple[int, str]:
    """(instances, device) of an instance group."""
    if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
        raise InvalidArgument(
            "config field 'instance_group[0].kind' KIND_MODEL is not supported: use KIND_CPU, KIND_GPU or KIND_AUTO"
        )
    if len(group.gpus) > 1:
        raise InvalidArgument(
            f"config field 'instance_group[0].gpus' lists {len(group.gpus)} GPUs; tesserad runs a version on one "
            "device: list one"
        )
    if group.kind == mc.ModelInstanceGroup.KIND_CPU:
        if group.gpus:
            raise InvalidArgument("config field 'instance_group[0].gpus' may not be set for KIND_CPU")
        return group.count, "cpu"
    if group.gpus and group.gpus[0] < 0:
        raise InvalidArgument(
            f"config field 'instance_group[0].gpus' must be at least 0, got {group.gpus[0]}"
        )
    if group.gpus or group.kind == mc.ModelInstanceGroup.KIND_GPU:
        return group.count, f"cuda:{group.gpus[0] if group.gpus else 0}"
    return group.count, ""


def _within(field: str, value: int, serving_field: str) -> int:
    """`value` when in the range LoadModel accepts for `serving_field` (0: the default where 0
    is not in the range)."""
    low, high = CONFIG_LIMITS[serving_field]
    if value != 0 and not low <= value <= high:
        default = " (0 for the default)" if low else ""
        raise InvalidArgument(f"config field {field!r} must be in {low}..{high}{default}, got {value}")
    return value


def _intra_op_threads(parameters: Mapping[str, mc.ModelParameter]) -> int | None:
    for key in parameters:
        if key not in _PARAMETERS and key not in _DESCRIBING:
            raise InvalidArgument(
                f"config field 'parameters.{key}' is not supported by tesserad, which takes {TAKEN_FIELDS}: "
                "remove it"
            )
    if "execution_mode" in parameters and parameters["execution_mode"].string_value != "0":
        raise InvalidArgument(
            f"config field 'parameters.execution_mode' is {parameters['execution_mode'].string_value!r}; "
            "tesserad runs onnxruntime sequentially (Triton's execution_mode 0), parallel across "
            'requests with instance_group\'s count: give "0" or leave it out'
        )
    if "inter_op_thread_count" in parameters:
        _whole_number(parameters, "inter_op_thread_count")
    if "intra_op_thread_count" not in parameters:
        return None
    return _within(
        "parameters.intra_op_thread_count",
        _whole_number(parameters, "intra_op_thread_count"),
        "intra_op_threads",
    )


def _whole_number(parameters: Mapping[str, mc.ModelParameter], key: str) -> int:
    text = parameters[key].string_value
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(
            f"config field 'parameters.{key}' must be a whole number as a string_value, got {text!r}"
        )
    return int(text)

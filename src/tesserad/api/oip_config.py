"""A Triton model configuration given to RepositoryModelLoad (tritonclient's
`load_model(name, config=json)`), read as Triton reads it (protobuf's JSON mapping of
inference.ModelConfig: snake_case or camelCase names, 64-bit integers as numbers or strings,
enums by name), and mapped onto the ServingConfig a LoadModel would take.

As in Triton, the JSON is the whole configuration: a field it leaves out takes its default.
The fields taken, and what they set:

    name                                                    must be the model's name
    platform, backend                                       runtime: onnxruntime_onnx/onnxruntime -> onnx,
                                                            pytorch_libtorch/pytorch -> torch
    max_batch_size                                          max_batch_size (absent: the default; 0,
                                                            Triton's "no batching", is refused: 1 is)
    dynamic_batching.max_queue_delay_microseconds           max_queue_delay_us (dynamic_batching given
                                                            without it: 0, as Triton reads it;
                                                            dynamic_batching absent: the default)
    dynamic_batching.default_queue_policy.max_queue_size    max_queue_size (absent: the default; 0,
                                                            Triton's unbounded queue, is refused)
    dynamic_batching.default_queue_policy.allow_timeout_override   nothing (`timeout` always applies)
    instance_group (at most one group)                      .count -> instances, .kind and .gpus -> device
                                                            (KIND_CPU: cpu; KIND_GPU or gpus [N]: cuda:N)
    response_cache.enable                                   response_cache
    parameters.intra_op_thread_count.string_value           intra_op_threads (the name Triton's
                                                            onnxruntime backend reads)

Any other field is refused, naming it: ignoring it would load something other than what was
asked for. tesserad always batches dynamically up to max_batch_size, so dynamic_batching only
carries its delay and queue size. Inputs, outputs and warmup samples come from the version's
signature, so they are refused too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from google.protobuf import json_format
from google.protobuf.message import Message

from tesserad.errors import InvalidArgument
from tesserad.oip import model_config_pb2 as mc
from tesserad.serving.pool import CONFIG_LIMITS, ServingConfig

_RUNTIME_BY_PLATFORM = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "torch"}
_RUNTIME_BY_BACKEND = {"onnxruntime": "onnx", "pytorch": "torch"}
# message type -> the fields of it that are taken (others set are refused).
_TAKEN: Mapping[str, frozenset[str]] = {
    mc.ModelConfig.DESCRIPTOR.full_name: frozenset(
        {
            "name",
            "platform",
            "backend",
            "max_batch_size",
            "dynamic_batching",
            "instance_group",
            "response_cache",
            "parameters",
        }
    ),
    mc.ModelDynamicBatching.DESCRIPTOR.full_name: frozenset(
        {"max_queue_delay_microseconds", "default_queue_policy"}
    ),
    mc.ModelQueuePolicy.DESCRIPTOR.full_name: frozenset({"max_queue_size", "allow_timeout_override"}),
    mc.ModelInstanceGroup.DESCRIPTOR.full_name: frozenset({"name", "kind", "count", "gpus"}),
    mc.ModelResponseCache.DESCRIPTOR.full_name: frozenset({"enable"}),
}
_PARAMETERS = frozenset({"intra_op_thread_count"})
TAKEN_FIELDS = (
    "name, platform, backend, max_batch_size, dynamic_batching.max_queue_delay_microseconds, "
    "dynamic_batching.default_queue_policy.max_queue_size, instance_group[0].count/kind/gpus, "
    "response_cache.enable, parameters.intra_op_thread_count"
)


def serving_config_of(text: str, model: str) -> ServingConfig:
    """The ServingConfig the `config` parameter `text` asks `model` to load with; InvalidArgument
    naming the field for JSON that is not a model configuration or sets what tesserad cannot do."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(f"parameter 'config' is not JSON: {err}") from None
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
    _refuse_zero(
        document, ("max_batch_size",), "Triton's 0 is a model without batching: give 1 to turn it off"
    )
    _refuse_zero(
        document,
        ("dynamic_batching", "default_queue_policy", "max_queue_size"),
        "Triton's 0 is an unbounded queue, and tesserad's is always bounded: give a size",
    )
    if config.name and config.name != model:
        raise InvalidArgument(
            f"config field 'name' is {config.name!r}, but the model loaded is {model!r}: leave it out or make it match"
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
    return ServingConfig(
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
        intra_op_threads=_intra_op_threads(config.parameters),
        response_cache=config.response_cache.enable,
    )


def _refuse_untaken(message: Message, path: str) -> None:
    """InvalidArgument naming the first field set in `message` (at `path`) that is not taken."""
    taken = _TAKEN[message.DESCRIPTOR.full_name]
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if field.name not in taken:
            raise InvalidArgument(
                f"config field {where!r} is not supported by tesserad, which takes {TAKEN_FIELDS}: remove it"
            )
        if field.name == "parameters":
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


def _runtime(platform: str, backend: str) -> str:
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


def _intra_op_threads(parameters: Mapping[str, mc.ModelParameter]) -> int:
    for key in parameters:
        if key not in _PARAMETERS:
            raise InvalidArgument(
                f"config field 'parameters.{key}' is not supported by tesserad, which takes {TAKEN_FIELDS}: "
                "remove it"
            )
    if "intra_op_thread_count" not in parameters:
        return 0
    text = parameters["intra_op_thread_count"].string_value
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(
            f"config field 'parameters.intra_op_thread_count' must be a whole number as a string_value, got {text!r}"
        )
    return _within("parameters.intra_op_thread_count", int(text), "intra_op_threads")

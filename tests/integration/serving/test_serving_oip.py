"""The Open Inference Protocol through the generated stubs (what tritonclient sends)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from serving_models import (
    W,
    cnn4d_weights,
    half_model,
    linear_model,
    predict_request,
    reshape_model,
    slow_model,
    two_output_model,
    upload,
    upload_weights,
)
from test_serving_routing import _wait_logged

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc, model_config_pb2
from tesserad.serving.open_inference import OpenInference
from tesserad.serving.shared_memory import _Region
from tests.conftest import InProcessDaemon, daemon_settings
from tests.held_threads import HeldInThread

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def infer_request(
    model: str,
    x: np.ndarray,
    version: str = "",
    raw: bool = True,
    datatype: str = "FP32",
    typed: bool = True,
) -> pb.ModelInferRequest:
    """Data in raw_input_contents, else (`typed`) in contents.fp32_contents, else nowhere."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    if raw:
        request.raw_input_contents.append(x.tobytes())
    elif typed:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="y")
    return request


def output(response: pb.ModelInferResponse, dtype: type = np.float32) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], dtype=dtype).reshape(response.outputs[0].shape)


def test_server_health_and_metadata(oip) -> None:
    assert oip.ServerLive(pb.ServerLiveRequest()).live
    assert oip.ServerReady(pb.ServerReadyRequest()).ready
    metadata = oip.ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "tesserad" and "statistics" in metadata.extensions
    assert "model_repository" in metadata.extensions and "system_shared_memory" in metadata.extensions
    # Request parameters, and priority and timeout (Triton's schedule_policy), are taken.
    assert {"parameters", "schedule_policy"} <= set(metadata.extensions)
    # Listed on both transports, as Triton lists it: the HTTP listener serves it.
    assert "binary_tensor_data" in metadata.extensions


def test_model_ready_only_once_loaded(oip, linear) -> None:
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear, version="1")).ready
    assert not oip.ModelReady(pb.ModelReadyRequest(name="missing")).ready
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    assert oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready  # latest (2) is loaded
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear, version="1")).ready
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.name, m.version, m.state) for m in index] == [(linear, "2", "READY")]
    oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=linear))
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready
    # As Triton: the version unloaded stays in the index, UNAVAILABLE for reason "unloaded".
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.name, m.version, m.state, m.reason) for m in index] == [
        (linear, "2", "UNAVAILABLE", "unloaded")
    ]
    assert list(oip.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models) == []
    oip.ModelInfer(infer_request(linear, X, version="1"))  # loads version 1 beside it
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.version, m.state, m.reason) for m in index] == [
        ("1", "READY", ""),
        ("2", "UNAVAILABLE", "unloaded"),
    ]
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.version, m.state) for m in index] == [("1", "READY"), ("2", "READY")]


def test_a_named_repository_is_refused_as_triton_refuses_it(oip, linear, expect_rpc_error) -> None:
    # tesserad has one repository, its registry: answering for it would answer another question.
    for call in (
        lambda: oip.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="models")),
        lambda: oip.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(repository_name="models", model_name=linear)
        ),
        lambda: oip.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(repository_name="models", model_name=linear)
        ),
    ):
        expect_rpc_error(
            call,
            grpc.StatusCode.UNIMPLEMENTED,
            "repository_name 'models': tesserad has one model repository (its registry) and does not "
            "take a repository's name; send the request without repository_name",
        )
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready  # the load did not run


def test_unload_dependents_is_a_boolean(oip, linear, expect_rpc_error) -> None:
    # tritonclient's unload_model(name, unload_dependents=...) sends it as bool_param.
    request = pb.RepositoryModelUnloadRequest(model_name=linear)
    request.parameters["unload_dependents"].string_param = "true"
    expect_rpc_error(
        lambda: oip.RepositoryModelUnload(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter 'unload_dependents' must be a bool_param, got string_param",
    )
    request.parameters["unload_dependents"].bool_param = True
    oip.RepositoryModelUnload(request)


def load_request(model: str, config: str) -> pb.RepositoryModelLoadRequest:
    """tritonclient's load_model(model, config=config)."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    request.parameters["config"].string_param = config
    return request


def test_repository_load_with_a_triton_config_loads_with_it(oip, inference, linear) -> None:
    config = {
        "name": linear,
        "backend": "onnxruntime",
        "max_batch_size": 4,
        # protobuf's JSON writes 64-bit integers as strings, as get_model_config(as_json) gives them.
        "dynamic_batching": {
            "max_queue_delay_microseconds": "150",
            "default_queue_policy": {"max_queue_size": 8, "allow_timeout_override": True},
        },
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"intra_op_thread_count": {"string_value": "1"}},
    }
    oip.RepositoryModelLoad(load_request(linear, json.dumps(config)))
    reported = oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config
    assert reported.max_batch_size == 4
    assert reported.dynamic_batching.max_queue_delay_microseconds == 150
    assert reported.dynamic_batching.default_queue_policy.max_queue_size == 8
    (group,) = reported.instance_group
    assert (group.count, group.kind) == (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.version, loaded.config.runtime, loaded.config.device) == (
        2,
        inference_pb2.RUNTIME_ONNX,
        "cpu",
    )
    assert (loaded.config.instances, loaded.config.intra_op_threads) == (1, 1)
    assert output(oip.ModelInfer(infer_request(linear, X))).shape == (2, 3)

    # As in Triton, a config is the whole configuration: what it leaves out takes its default,
    # and a loaded version swaps to it. camelCase names are protobuf's JSON too.
    oip.RepositoryModelLoad(load_request(linear, '{"maxBatchSize": 2}'))
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert loaded.state == inference_pb2.LOAD_STATE_READY
    assert (loaded.config.max_batch_size, loaded.config.max_queue_delay_us, loaded.config.max_queue_size) == (
        2,
        0,
        1024,
    )
    # Without a config, a loaded version keeps the one it runs with.
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    assert oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config.max_batch_size == 2


def test_a_triton_config_without_a_thread_count_takes_the_daemons(start_daemon) -> None:
    channel = start_daemon(**{"serving.intra_op_threads": 3}).channel()
    upload(channel, "linear", linear_model(1.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)

    def threads() -> int:
        (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="linear")).models
        return loaded.config.intra_op_threads

    oip.RepositoryModelLoad(load_request("linear", '{"max_batch_size": 2}'))
    assert threads() == 3
    # ModelConfig names the count, so a config read back and loaded again keeps it.
    config = oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config
    assert config.parameters["intra_op_thread_count"].string_value == "3"
    config.parameters["intra_op_thread_count"].string_value = "1"
    oip.RepositoryModelLoad(load_request("linear", json_format.MessageToJson(config)))
    assert threads() == 1
    config = oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config
    assert config.parameters["intra_op_thread_count"].string_value == "1"


# model_warmup's inputs as ModelConfig gives them for "linear".
WARMUP_INPUTS = '{"x": {"data_type": "TYPE_FP32", "dims": [4], "random_data": true}}'
BAD_CONFIGS = [
    ('{"foo": 1}', 'has no field named "foo"'),
    ('{"dynamic_batching": {"bogus": 1}}', 'has no field named "bogus" at "ModelConfig.dynamic_batching"'),
    ('{"max_batch_size": "many"}', "Failed to parse max_batch_size field"),
    ('{"max_batch_size": 1.5}', "Failed to parse max_batch_size field"),
    ('{"response_cache": {"enable": "yes"}}', "Failed to parse response_cache field"),
    ('{"instance_group": [{"kind": "KIND_XPU"}]}', "Invalid enum value KIND_XPU"),
    ("not json", "parameter 'config' is not JSON"),
    ("[1]", "parameter 'config' must be a JSON object"),
    (
        # Checked against the max_batch_size the load applies: the daemon's default, 32.
        '{"dynamic_batching": {"preferred_batch_size": [40]}}',
        "config field 'dynamic_batching.preferred_batch_size' holds 40; each size must be in 1..32 (the "
        "max_batch_size the load applies)",
    ),
    (
        '{"dynamic_batching": {"default_queue_policy": {"timeout_action": "DELAY"}}}',
        "config field 'dynamic_batching.default_queue_policy.timeout_action' is not supported",
    ),
    (
        '{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [5]}]}',
        "config field 'input' is x FP32 [5], but linear version 2 has x FP32 [4]: a config cannot change "
        "a model's signature",
    ),
    (
        '{"output": [{"name": "y", "data_type": "TYPE_FP64", "dims": [3]}]}',
        "config field 'output' is y FP64 [3], but linear version 2 has y FP32 [3]",
    ),
    ('{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4], "optional": true}]}', "'input'"),
    (
        '{"model_warmup": [{"name": "w", "batch_size": 1}]}',
        "config field 'model_warmup[0].inputs' differs from the samples of linear version 2's signature",
    ),
    (
        '{"model_warmup": [{"batch_size": 4, "count": 2, "inputs": ' + WARMUP_INPUTS + "}]}",
        "config field 'model_warmup[0]' is 4 rows 2 times",
    ),
    (
        '{"model_warmup": [{"batch_size": 1, "count": 2, "inputs": '
        + WARMUP_INPUTS
        + '}, {"batch_size": 1, "count": 2, "inputs": '
        + WARMUP_INPUTS
        + "}]}",
        "config field 'model_warmup[1]' is a second 1-row entry",
    ),
    (
        '{"model_warmup": [{"batch_size": 1, "count": 2, "inputs": {"x": {"data_type": "TYPE_FP32", '
        '"dims": [4], "input_data_file": "x.bin"}}}]}',
        "config field 'model_warmup[0].inputs' differs",
    ),
    ('{"model_warmup": [{"batch_size": 1, "count": 1001, "inputs": ' + WARMUP_INPUTS + "}]}", "in 0..1000"),
    ('{"instance_group": [{"rate_limiter": {}}]}', "config field 'instance_group[0].rate_limiter' is not"),
    (
        '{"parameters": {"enable_mem_arena": {"string_value": "1"}}}',
        "config field 'parameters.enable_mem_arena'",
    ),
    (
        '{"model_transaction_policy": {"decoupled": true}}',
        "config field 'model_transaction_policy.decoupled'",
    ),
    ('{"version_policy": {"specific": {}}}', "config field 'version_policy.specific.versions' is empty"),
    (
        '{"parameters": {"intra_op_thread_count": {"string_value": "two"}}}',
        "config field 'parameters.intra_op_thread_count' must be a whole number",
    ),
    (
        '{"max_batch_size": 70000}',
        "config field 'max_batch_size' must be in 1..65536 (0 for the default), got 70000",
    ),
    ('{"max_batch_size": 0}', "config field 'max_batch_size' is 0; Triton's 0 is a model without batching"),
    ('{"maxBatchSize": "0"}', "config field 'max_batch_size' is 0"),
    (
        '{"dynamicBatching": {"default_queue_policy": {"maxQueueSize": 0}}}',
        "config field 'dynamic_batching.default_queue_policy.max_queue_size' is 0; Triton's 0 is an unbounded",
    ),
    ('{"max_batch_size": -1}', "config field 'max_batch_size' must be in 1..65536"),
    (
        '{"dynamic_batching": {"max_queue_delay_microseconds": 20000000}}',
        "config field 'dynamic_batching.max_queue_delay_microseconds' must be in 0..10000000",
    ),
    ('{"instance_group": [{"count": 65}]}', "config field 'instance_group[0].count' must be in 1..64"),
    ('{"instance_group": [{"count": 1}, {"count": 1}]}', "config field 'instance_group' has 2 groups"),
    ('{"instance_group": [{"kind": "KIND_CPU", "gpus": [0]}]}', "may not be set for KIND_CPU"),
    ('{"instance_group": [{"kind": "KIND_GPU", "gpus": [0, 1]}]}', "lists 2 GPUs"),
    ('{"instance_group": [{"kind": "KIND_MODEL"}]}', "KIND_MODEL is not supported"),
    ('{"platform": "tensorrt_plan"}', "config field 'platform' is 'tensorrt_plan'"),
    ('{"platform": "onnxruntime_onnx", "backend": "pytorch"}', "disagree"),
    ('{"name": "other"}', "config field 'name' is 'other', but the model loaded is 'linear'"),
]


def test_repository_load_refuses_a_config_it_cannot_take(oip, inference, linear, expect_rpc_error) -> None:
    for config, message in BAD_CONFIGS:
        expect_rpc_error(
            lambda config=config: oip.RepositoryModelLoad(load_request(linear, config)),
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
        )
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready
    wrong_kind = pb.RepositoryModelLoadRequest(model_name=linear)
    wrong_kind.parameters["config"].int64_param = 4
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(wrong_kind),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter 'config' must be a string_param, got int64_param",
    )
    # Taken, then refused by the load itself, in LoadModel's words; INVALID_ARGUMENT, as Triton
    # answers a load that fails (LoadModel: FAILED_PRECONDITION).
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(load_request(linear, '{"backend": "pytorch"}')),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the torch runtime needs a safetensors version",
    )
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(load_request(linear, '{"response_cache": {"enable": true}}')),
        grpc.StatusCode.INVALID_ARGUMENT,
        "response_cache needs the daemon's response cache: set serving.response_cache_size",
    )
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready

    # A refused config leaves a loaded version running as it was.
    oip.RepositoryModelLoad(load_request(linear, '{"max_batch_size": 4}'))
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(load_request(linear, '{"max_batch_size": 8, "foo": 1}')),
        grpc.StatusCode.INVALID_ARGUMENT,
        'has no field named "foo"',
    )
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.state, loaded.config.max_batch_size) == (inference_pb2.LOAD_STATE_READY, 4)


def triton_json(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    """`config` as tritonclient's get_model_config(name, as_json=True)["config"] gives it over gRPC:
    protobuf's JSON, which leaves out fields at 0 and empty lists."""
    document: dict[str, Any] = json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))
    return document


def test_the_config_model_config_answers_loads_back_and_with_fields_changed(oip, inference, linear) -> None:
    # A Triton user's workflow: get the config, change a field, load the model with it.
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    before = oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config
    assert before.input and before.output and len(before.model_warmup) == 2
    oip.RepositoryModelLoad(load_request(linear, json.dumps(triton_json(before))))
    assert oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config == before

    changed = triton_json(before)
    changed["max_batch_size"] = 8
    changed["dynamic_batching"]["max_queue_delay_microseconds"] = "300"
    oip.RepositoryModelLoad(load_request(linear, json.dumps(changed)))
    after = oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config
    assert (after.max_batch_size, after.dynamic_batching.max_queue_delay_microseconds) == (8, 300)
    # The warm-up's largest batch follows max_batch_size; the rest is as it was.
    assert [(w.batch_size, w.count) for w in after.model_warmup] == [(8, 1), (1, 2)]
    assert (after.input, after.output, after.instance_group) == (
        before.input,
        before.output,
        before.instance_group,
    )
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.config.max_batch_size, loaded.config.max_queue_delay_us, loaded.config.warmup_runs) == (
        8,
        300,
        2,
    )

    # model_warmup's 1-row count is warmup_runs; without a 1-row entry there is no warm-up.
    changed["model_warmup"][1]["count"] = 5
    oip.RepositoryModelLoad(load_request(linear, json.dumps(changed)))
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert loaded.config.warmup_runs == 5
    changed["model_warmup"] = []
    oip.RepositoryModelLoad(load_request(linear, json.dumps(changed)))
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.state, loaded.config.warmup_runs) == (inference_pb2.LOAD_STATE_READY, 0)
    assert not oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config.model_warmup
    assert output(oip.ModelInfer(infer_request(linear, X))).shape == (2, 3)


# What Triton 2.4x answers (over HTTP, every field written) for a model like "linear" version 2.
TRITON_CONFIG: dict[str, Any] = {
    "name": "linear",
    "platform": "onnxruntime_onnx",
    "backend": "onnxruntime",
    "runtime": "",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 8,
    "input": [
        {
            "name": "x",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [4],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        }
    ],
    "output": [
        {"name": "y", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "", "is_shape_tensor": False}
    ],
    "batch_input": [],
    "batch_output": [],
    "optimization": {
        "priority": "PRIORITY_DEFAULT",
        "input_pinned_memory": {"enable": True},
        "output_pinned_memory": {"enable": True},
        "gather_kernel_buffer_threshold": 0,
        "eager_batching": False,
    },
    "dynamic_batching": {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 0,
        "preserve_ordering": False,
        "priority_levels": 0,
        "default_priority_level": 0,
        "priority_queue_policy": {},
    },
    "instance_group": [
        {
            "name": "linear",
            "kind": "KIND_CPU",
            "count": 1,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ],
    "default_model_filename": "model.onnx",
    "cc_model_filenames": {},
    "metric_tags": {},
    "parameters": {
        "intra_op_thread_count": {"string_value": "1"},
        "inter_op_thread_count": {"string_value": "1"},
        "execution_mode": {"string_value": "0"},
    },
    "model_warmup": [],
    "model_transaction_policy": {"decoupled": False},
}


def test_the_config_triton_answers_loads_as_it_is(oip, inference, linear, caplog, expect_rpc_error) -> None:
    with caplog.at_level(logging.INFO, logger="tesserad"):
        oip.RepositoryModelLoad(load_request(linear, json.dumps(TRITON_CONFIG)))
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.version, loaded.config.max_batch_size, loaded.config.instances) == (2, 8, 1)
    assert (loaded.config.intra_op_threads, loaded.config.warmup_runs) == (1, 0)
    # The fields taken without effect are named, once, at INFO; [8] is what tesserad does anyway.
    (noted,) = [r for r in caplog.records if "taken without effect" in r.getMessage()]
    assert noted.levelno == logging.INFO
    assert sorted(noted.fields) == [  # type: ignore[attr-defined]
        "default_model_filename",
        "model_transaction_policy",
        "optimization",
        "parameters.execution_mode",
        "parameters.inter_op_thread_count",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # Preferred sizes other than max_batch_size are not aimed at: a WARNING says what is done instead.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tesserad"):
        preferred = {**TRITON_CONFIG, "dynamic_batching": {"preferred_batch_size": [2, 4]}}
        oip.RepositoryModelLoad(load_request(linear, json.dumps(preferred)))
    (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "preferred_batch_size is not honoured: tesserad batches up to max_batch_size" in warned.getMessage()
    )
    # A load that fails logs nothing of what it would have taken.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tesserad"):
        failing = {**preferred, "platform": "pytorch", "backend": "pytorch"}
        expect_rpc_error(
            lambda: oip.RepositoryModelLoad(load_request(linear, json.dumps(failing))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the torch runtime needs a safetensors version",
        )
    assert not [
        r
        for r in caplog.records
        if "preferred_batch_size" in r.getMessage() or "without effect" in r.getMessage()
    ]

    # Values that would change what Triton does, which tesserad cannot: refused, naming the field.
    for changed, code, message in (
        (
            {"model_transaction_policy": {"decoupled": True}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config field 'model_transaction_policy.decoupled' is true; tesserad answers every request "
            "with one response",
        ),
        (
            {"dynamic_batching": {"preferred_batch_size": [16]}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config field 'dynamic_batching.preferred_batch_size' holds 16; each size must be in 1..8",
        ),
        (
            {"parameters": {"execution_mode": {"string_value": "1"}}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config field 'parameters.execution_mode' is '1'; tesserad runs onnxruntime sequentially",
        ),
        (
            {"optimization": {"cuda": {"graphs": True}}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config field 'optimization.cuda' is not supported by tesserad",
        ),
        (
            # Taken (the name of a torch version's platform), then refused by the load.
            {"platform": "pytorch", "backend": "pytorch"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "the torch runtime needs a safetensors version",
        ),
        (
            {"version_policy": {"latest": {"num_versions": 17}}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config field 'version_policy.latest.num_versions' is 17; one load serves at most 16",
        ),
        (
            {"version_policy": {"specific": {"versions": [2, 9]}}},
            grpc.StatusCode.NOT_FOUND,
            "model 'linear' has no version 9",
        ),
    ):
        expect_rpc_error(
            lambda changed=changed: oip.RepositoryModelLoad(
                load_request(linear, json.dumps({**TRITON_CONFIG, **changed}))
            ),
            code,
            message,
        )
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=linear)).models
    assert (loaded.version, loaded.config.max_batch_size) == (2, 8)  # as it was


def test_version_policy_chooses_the_versions_loaded(start_daemon, expect_rpc_error) -> None:
    # Autoload off, as a Triton server with explicit model control: only what is loaded serves.
    channel = start_daemon(**{"serving.autoload": False}).channel()
    # One more version than one load serves.
    for _ in range(17):
        upload(channel, "linear", linear_model(1.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)

    def ready() -> list[int]:
        loaded = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="linear")).models
        return [m.version for m in loaded if m.state == inference_pb2.LOAD_STATE_READY]

    def load(policy: dict[str, Any] | None) -> list[int]:
        config = {"max_batch_size": 4} if policy is None else {"version_policy": policy}
        oip.RepositoryModelLoad(load_request("linear", json.dumps(config)))
        return ready()

    def served_by() -> str:
        return oip.ModelInfer(infer_request("linear", X)).model_version

    # A Triton client names its way to load a version, not tessera's own LoadModel.
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request("linear", X, version="1")),
        grpc.StatusCode.UNAVAILABLE,
        'load it with RepositoryModelLoad and a config naming it in its version_policy ({"version_policy": '
        '{"specific": {"versions": [1]}}})',
    )
    assert load({"specific": {"versions": [1]}}) == [1]
    # As in Triton, a request naming no version goes to the highest version ready.
    assert served_by() == "1"
    assert oip.ModelReady(pb.ModelReadyRequest(name="linear")).ready
    config = oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config
    assert list(config.version_policy.specific.versions) == [1]
    assert config.parameters["tessera_version"].string_value == "1"
    # The config read back loads as it is, keeping its policy.
    oip.RepositoryModelLoad(load_request("linear", json_format.MessageToJson(config)))
    assert served_by() == "1"

    # Each policy unloads the versions it does not name.
    assert load({"latest": {"num_versions": 2}}) == [16, 17]
    assert served_by() == "17"
    # More versions than one load serves: refused, naming the way to choose, and nothing changes.
    expect_rpc_error(
        lambda: load({"all": {}}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "config field 'version_policy' is all, but model 'linear' has more than 16 versions, the most one "
        'load serves: name the versions with {"specific": {"versions": [...]}}',
    )
    assert ready() == [16, 17]
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request("linear", X, version="3")),
        grpc.StatusCode.UNAVAILABLE,
        '({"version_policy": {"specific": {"versions": [3, 16, 17]}}}), or turn on serving.autoload',
    )
    expect_rpc_error(
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name="linear", version="3")),
        grpc.StatusCode.NOT_FOUND,
        # The policy suggested keeps the versions loaded: a specific one unloads those it leaves out.
        'load it with RepositoryModelLoad and a config naming it in its version_policy ({"version_policy": '
        '{"specific": {"versions": [3, 16, 17]}}}) (serving.autoload is off)',
    )
    assert load({"specific": {"versions": [2, 1]}}) == [1, 2]
    assert served_by() == "2"
    assert oip.ModelInfer(infer_request("linear", X, version="1")).model_version == "1"
    # Without a policy (or with Triton's default, latest 1): the version requests are routed to.
    assert load(None) == [17]
    assert not oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config.HasField("version_policy")
    assert load({"latest": {"num_versions": 1}}) == [17]
    assert served_by() == "17"

    oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="linear"))
    assert not oip.ModelReady(pb.ModelReadyRequest(name="linear")).ready


def test_a_version_that_cannot_batch_loads_back_its_max_batch_size_0(oip, channel, expect_rpc_error) -> None:
    upload(channel, "fixed", reshape_model([1, 4]))
    before = oip.ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert before.max_batch_size == 0 and list(before.input[0].dims) == [-1, 4]
    document = json_format.MessageToDict(before, preserving_proto_field_name=True)
    document["max_batch_size"] = 0
    oip.RepositoryModelLoad(load_request("fixed", json.dumps(document)))
    assert oip.ModelConfig(pb.ModelConfigRequest(name="fixed")).config == before
    document["input"][0]["dims"] = ["4"]
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(load_request("fixed", json.dumps(document))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "config field 'input' is x FP32 [4], but fixed version 1 has x FP32 [-1, 4]",
    )


def test_a_config_sets_the_delay_to_0_under_a_non_zero_daemon_default(start_daemon) -> None:
    # An idle model holds a lone request up to the delay: 10 s by the daemon's default here.
    daemon = start_daemon(**{"serving.max_queue_delay_us": 10_000_000})
    channel = daemon.channel()
    upload(channel, "linear", linear_model(1.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
    config = oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config
    assert config.dynamic_batching.max_queue_delay_microseconds == 10_000_000
    config.dynamic_batching.max_queue_delay_microseconds = 0
    # protobuf's JSON leaves the 0 out of dynamic_batching, and Triton reads that as 0.
    document = triton_json(config)
    assert "max_queue_delay_microseconds" not in document["dynamic_batching"]
    oip.RepositoryModelLoad(load_request("linear", json.dumps(document)))
    assert oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config == config
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="linear")).models
    assert loaded.config.HasField("max_queue_delay_us") and loaded.config.max_queue_delay_us == 0
    # Not held: answered well within a deadline the default delay would pass.
    oip.ModelInfer(infer_request("linear", X[:1]), timeout=5.0)
    # Without dynamic_batching, the daemon's default.
    oip.RepositoryModelLoad(load_request("linear", '{"max_batch_size": 4}'))
    reported = oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config
    assert reported.dynamic_batching.max_queue_delay_microseconds == 10_000_000


def test_repository_load_refuses_files_it_would_ignore(oip, linear, expect_rpc_error) -> None:
    # tritonclient's load_model(name, config=..., files=...): Triton loads those files; loading the
    # registry's artifact instead would not be what the caller asked for.
    with_files = load_request(linear, "{}")
    with_files.parameters["file:1/model.onnx"].bytes_param = b"onnx"
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(with_files),
        grpc.StatusCode.UNIMPLEMENTED,
        "tesserad does not take files in RepositoryModelLoad (got file:1/model.onnx)",
    )
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready


def test_repository_load_config_turns_the_response_cache_on(start_daemon) -> None:
    daemon = start_daemon(**{"serving.response_cache_size": 1 << 20})
    channel = daemon.channel()
    upload(channel, "linear", linear_model(1.0))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    oip.RepositoryModelLoad(load_request("linear", '{"response_cache": {"enable": true}}'))
    assert oip.ModelConfig(pb.ModelConfigRequest(name="linear")).config.response_cache.enable
    for _ in range(2):
        oip.ModelInfer(infer_request("linear", X))
    (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name="linear")).model_stats
    assert (stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count) == (1, 1)


def test_repository_load_of_a_loaded_model_keeps_its_serving_config(oip, inference, linear) -> None:
    # tritonclient users often call load_model before they infer: that must not undo the config
    # an operator loaded the version with (Triton would reload with the repository's config,
    # which is where its operator set it).
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=linear), config=inference_pb2.ServingConfig(max_batch_size=4)
        )
    )
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    assert oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config.max_batch_size == 4


def test_model_infer_raw_and_typed(oip, linear) -> None:
    raw = oip.ModelInfer(infer_request(linear, X, version="1"))
    assert (raw.model_name, raw.model_version, raw.id) == (linear, "1", "req-1")
    assert (
        raw.outputs[0].name == "y"
        and raw.outputs[0].datatype == "FP32"
        and list(raw.outputs[0].shape) == [2, 3]
    )
    np.testing.assert_allclose(output(raw), X @ W, rtol=1e-6)
    typed = oip.ModelInfer(infer_request(linear, X, version="1", raw=False))
    np.testing.assert_allclose(output(typed), X @ W, rtol=1e-6)
    latest = oip.ModelInfer(infer_request(linear, X))
    assert latest.model_version == "2"


def test_model_infer_fp16_raw(oip, channel) -> None:
    upload(channel, "half", half_model())
    x = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float16)
    request = pb.ModelInferRequest(model_name="half")
    request.inputs.add(name="x", datatype="FP16", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    response = oip.ModelInfer(request)
    assert response.outputs[0].datatype == "FP16"
    np.testing.assert_array_equal(output(response, np.float16), x * 2)


def test_a_version_named_by_alias_is_told_where_aliases_are_served(oip, linear, expect_rpc_error) -> None:
    # Triton's model_version is a number; tessera's aliases are served by its own protocol.
    for version in ("latest", "production"):
        expect_rpc_error(
            lambda version=version: oip.ModelInfer(infer_request(linear, X, version=version)),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model_version must be a whole number in 1..{2**63 - 1} written in digits 0-9, got "
            f"{version!r}; the Open Inference Protocol names versions by number: aliases (and latest) "
            "are served through tessera.v1.Inference's Predict (VersionRef.alias) or `tessera predict "
            "--alias`, and a model_version left empty is the version its requests are routed to (its "
            "deployment's, else the version the daemon's serving.default_alias names, else its latest)",
        )


def test_model_infer_bad_paths(oip, linear, expect_rpc_error) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    takes = f"model_version must be a whole number in 1..{2**63 - 1} written in digits 0-9"
    # str.isdigit() holds for "²" and "٣", but they are no version numbers ("²" does not even
    # parse); int() refuses over 4300 digits.
    for version in ("one", "²", "٣", "0", str(2**63), "1" * 5000):
        expect_rpc_error(
            lambda version=version: oip.ModelInfer(infer_request(linear, X, version=version)),
            invalid,
            takes,
        )
    expect_rpc_error(
        lambda: oip.ModelMetadata(pb.ModelMetadataRequest(name=linear, version=str(2**63))),
        invalid,
        takes,
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X, version=str(2**63 - 1))),
        grpc.StatusCode.NOT_FOUND,
        f"model 'linear' has no version {2**63 - 1}",
    )
    # Strings (each element's length, then its bytes) sent to a number input.
    strings = infer_request(linear, X, datatype="BYTES")
    strings.raw_input_contents[0] = b"".join(len(b"ab").to_bytes(4, "little") + b"ab" for _ in range(8))
    expect_rpc_error(
        lambda: oip.ModelInfer(strings),
        invalid,
        "input 'x' has datatype BYTES; model 'linear' version 2 expects FP32",
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X, datatype="FP64")),
        invalid,
        "input 'x' has 32 bytes of data, but shape [2, 4] of FP64 needs 64",
    )
    short = infer_request(linear, X, raw=False)
    del short.inputs[0].contents.fp32_contents[-1]
    expect_rpc_error(
        lambda: oip.ModelInfer(short),
        invalid,
        "input 'x' has 7 values in contents.fp32_contents, but shape [2, 4] needs 8",
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X, raw=False, typed=False)),
        invalid,
        "input 'x' has no data: send its 8 values of shape [2, 4] in raw_input_contents (one entry "
        "per input, in order) or in contents.fp32_contents",
    )
    # Typed contents in another field than the datatype's would be read as none, or ignored.
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X, raw=False, datatype="FP64")),
        invalid,
        "input 'x' is FP64, whose values go in contents.fp64_contents, but it has values in "
        "contents.fp32_contents; send the datatype its values are, or send them in contents.fp64_contents",
    )
    mixed = infer_request(linear, X, raw=False)
    mixed.inputs[0].contents.int_contents.extend([1, 2])
    expect_rpc_error(
        lambda: oip.ModelInfer(mixed),
        invalid,
        "input 'x' is FP32, whose values go in contents.fp32_contents, but it has values in "
        "contents.int_contents",
    )
    # As Triton: with raw_input_contents, typed contents would be ignored, so they are refused.
    both = infer_request(linear, X)
    both.inputs[0].contents.fp32_contents.extend(np.zeros(8).tolist())
    expect_rpc_error(
        lambda: oip.ModelInfer(both),
        invalid,
        "input 'x' has contents as well as raw_input_contents; send each input's data in one of them",
    )
    extra_raw = infer_request(linear, X)
    extra_raw.raw_input_contents.append(b"")
    expect_rpc_error(
        lambda: oip.ModelInfer(extra_raw), invalid, "raw_input_contents has 2 entries for 1 inputs"
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request("missing", X)), grpc.StatusCode.NOT_FOUND, "missing"
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X.reshape(4, 2))),
        invalid,
        "input 'x' has size 2 in dimension 1; model 'linear' version 2 expects 4 there",
    )


def test_requested_outputs_are_the_ones_answered_in_their_order(oip, channel, expect_rpc_error) -> None:
    upload(channel, "two", two_output_model())

    def request(*outputs: str) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="two")
        r.inputs.add(name="x", datatype="FP32", shape=X.shape)
        r.raw_input_contents.append(X.tobytes())
        for name in outputs:
            r.outputs.add(name=name)
        return r

    assert [o.name for o in oip.ModelInfer(request()).outputs] == ["a", "b"]
    answer = oip.ModelInfer(request("b", "a"))
    assert [o.name for o in answer.outputs] == ["b", "a"]
    np.testing.assert_array_equal(output(answer), X + X)
    assert [o.name for o in oip.ModelInfer(request("b")).outputs] == ["b"]
    # As Triton, which refuses an output requested twice.
    expect_rpc_error(
        lambda: oip.ModelInfer(request("a", "a")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output 'a' is requested twice; request each output once",
    )
    # tritonclient's InferRequestedOutput(name, class_count=2): Triton would answer the top 2
    # classes as strings; answering the raw scores instead would be read as something else.
    classes = request("a")
    classes.outputs[0].parameters["classification"].int64_param = 2
    expect_rpc_error(
        lambda: oip.ModelInfer(classes),
        grpc.StatusCode.UNIMPLEMENTED,
        "output 'a' asks for classification, an Open Inference Protocol extension tesserad does not offer",
    )


def test_model_stream_infer_reports_errors_in_the_stream(oip, linear) -> None:
    good = infer_request(linear, X, version="1")
    bad = infer_request(linear, X.reshape(4, 2), version="1")
    bad.id = "bad"
    responses = list(oip.ModelStreamInfer(iter([good, bad, good])))
    assert len(responses) == 3
    errors = [r for r in responses if r.error_message]
    assert len(errors) == 1 and errors[0].infer_response.id == "bad"
    assert "input 'x' has size 2 in dimension 1" in errors[0].error_message
    for response in responses:
        if not response.error_message:
            np.testing.assert_allclose(output(response.infer_response), X @ W, rtol=1e-6)


def test_model_metadata_config_and_statistics(oip, linear) -> None:
    metadata = oip.ModelMetadata(pb.ModelMetadataRequest(name=linear, version="1"))
    assert metadata.platform == "onnxruntime_onnx" and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("y", "FP32", [-1, 3])]
    config = oip.ModelConfig(pb.ModelConfigRequest(name=linear, version="1")).config
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds == 0
    # The queue's bound, and requests' own `timeout` (none by default) dropping them unrun.
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.allow_timeout_override) == (1024, True)
    assert (policy.timeout_action, policy.default_timeout_microseconds) == (
        model_config_pb2.ModelQueuePolicy.REJECT,
        0,
    )
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", model_config_pb2.TYPE_FP32, [4])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
    # The warm-up it had: a batch of max_batch_size rows, then warmup_runs (2) of one row.
    warmup = [(w.name, w.batch_size, w.count, dict(w.inputs)) for w in config.model_warmup]
    sample = model_config_pb2.ModelWarmup.Input(
        data_type=model_config_pb2.TYPE_FP32, dims=[4], random_data=True
    )
    assert warmup == [("32 rows", 32, 1, {"x": sample}), ("1 row", 1, 2, {"x": sample})]
    (group,) = config.instance_group
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)  # as Triton's
    for _ in range(3):
        oip.ModelInfer(infer_request(linear, X, version="1"))
    (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name=linear, version="1")).model_stats
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == (linear, "1", 6, 3)
    assert stats.inference_stats.success.count == 3 and stats.inference_stats.success.ns > 0
    assert stats.inference_stats.compute_infer.ns > 0 and stats.last_inference > 0
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(2, 3)]
    # Decoding the inputs and encoding the answers are timed, per request and per batch size.
    io = stats.inference_stats
    assert (io.compute_input.count, io.compute_output.count) == (3, 3)
    assert io.compute_input.ns > 0 and io.compute_output.ns > 0
    (batch,) = stats.batch_stats
    assert batch.compute_input.ns > 0 and batch.compute_output.ns > 0
    # Each batch was one request of 2 rows: the batches' share is the requests' whole time
    # (to a few ns: it is spread per row), not twice it.
    assert io.compute_input.ns - 6 <= batch.compute_input.ns <= io.compute_input.ns
    assert io.compute_output.ns - 6 <= batch.compute_output.ns <= io.compute_output.ns


def test_statistics_count_every_request_in_compute_input_and_output(oip, inference, linear) -> None:
    # As Triton's: compute_input, compute_infer and compute_output each count every request that
    # succeeded (cache hits aside), whichever API it came through (tessera's Predict too).
    inference.Predict(predict_request(linear, X, version=1))
    for _ in range(2):
        oip.ModelInfer(infer_request(linear, X, version="1"))
    (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name=linear, version="1")).model_stats
    io = stats.inference_stats
    counts = (io.success, io.compute_input, io.compute_infer, io.compute_output)
    assert [c.count for c in counts] == [3, 3, 3, 3]
    assert io.compute_input.ns > 0 and io.compute_output.ns > 0
    # The batches' share is the requests' whole time (to a few ns: it is spread per row), not more.
    (batch,) = stats.batch_stats
    assert (batch.batch_size, batch.compute_input.count) == (2, 3)
    assert io.compute_input.ns - 6 <= batch.compute_input.ns <= io.compute_input.ns
    assert io.compute_output.ns - 6 <= batch.compute_output.ns <= io.compute_output.ns


def test_statistics_of_unloaded_or_unknown_model_is_not_found(oip, linear, expect_rpc_error) -> None:
    expect_rpc_error(
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name=linear, version="2")),
        grpc.StatusCode.NOT_FOUND,
        # RepositoryModelLoad loads the versions the model serves unless its version_policy names others.
        "model 'linear' version 2 is not loaded, so it has no statistics yet; load it with "
        "RepositoryModelLoad and a config naming it in its version_policy, or by an inference request "
        "naming version 2 "
        "(one naming no version loads the one requests are routed to)",
    )
    # In the protocol's words: Predict and LoadModel are tessera.v1.Inference's, not a Triton client's.
    error = expect_rpc_error(
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name=linear)),
        grpc.StatusCode.NOT_FOUND,
        "model 'linear' is registered but has no loaded version, so it has no statistics yet; send it an inference request "
        "to load it, or load it with RepositoryModelLoad",
    )
    assert error.details().endswith("RepositoryModelLoad")
    expect_rpc_error(
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name="absent")),
        grpc.StatusCode.NOT_FOUND,
        "model 'absent' does not exist",
    )
    assert list(oip.ModelStatistics(pb.ModelStatisticsRequest()).model_stats) == []  # all loaded: none


def test_unsupported_extensions_are_unimplemented_with_a_reason(oip, expect_rpc_error) -> None:
    unimplemented = grpc.StatusCode.UNIMPLEMENTED
    error = expect_rpc_error(
        lambda: oip.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest()),
        unimplemented,
        "tesserad does not support CUDA shared memory",
    )
    assert "system shared memory" in error.details()
    expect_rpc_error(
        lambda: oip.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()), unimplemented, "cudaIPC"
    )


def test_a_request_over_max_batch_size_is_refused_as_triton_does(
    oip, inference, linear, expect_rpc_error
) -> None:
    # ModelConfig tells a Triton client the most rows a request may carry; Triton refuses more.
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=linear, version=1),
            config=inference_pb2.ServingConfig(max_batch_size=4),
        )
    )
    assert oip.ModelConfig(pb.ModelConfigRequest(name=linear, version="1")).config.max_batch_size == 4
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, np.ones((5, 4), np.float32), version="1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inference request batch-size must be <= 4 for 'linear': input 'x' has 5 rows",
    )
    assert list(
        oip.ModelInfer(infer_request(linear, np.ones((4, 4), np.float32), version="1")).outputs[0].shape
    ) == [4, 3]
    # A version loaded for the request (autoload) is held to its default max_batch_size too.
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, np.ones((33, 4), np.float32), version="2")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inference request batch-size must be <= 32 for 'linear'",
    )


def with_parameters(request: pb.ModelInferRequest, **parameters: bool | int | str) -> pb.ModelInferRequest:
    """`request` with InferParameters as tritonclient sends them (bool, int64 or string)."""
    for key, value in parameters.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = value
    return request


def test_a_sequence_request_is_refused_rather_than_answered_without_its_state(
    oip, linear, expect_rpc_error
) -> None:
    # tritonclient's infer(sequence_id=..., sequence_start=...) is for a stateful model, whose
    # answer depends on the sequence's earlier requests; answering each request alone would be wrong.
    for parameters in (
        {"sequence_id": 7, "sequence_start": True},
        {"sequence_id": "session-7"},
        {"sequence_end": True},
    ):
        expect_rpc_error(
            lambda parameters=parameters: oip.ModelInfer(
                with_parameters(infer_request(linear, X), **parameters)
            ),
            grpc.StatusCode.UNIMPLEMENTED,
            "tesserad keeps no state between requests (no model has sequence batching)",
        )
    # tritonclient sends no sequence parameters unless asked; a zero sequence_id is none, as in Triton.
    oip.ModelInfer(with_parameters(infer_request(linear, X), sequence_id=0, sequence_start=False))


def test_priority_and_timeout_parameters_are_checked_as_triton_checks_them(
    oip, linear, expect_rpc_error
) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for parameters, text in (
        ({"priority": -1}, "parameter 'priority' must be at least 0, got -1"),
        ({"priority": "high"}, "parameter 'priority' must be an int64_param or uint64_param"),
        ({"timeout": -5}, "parameter 'timeout' must be at least 0 microseconds (0: none), got -5"),
        ({"timeout": "1s"}, "parameter 'timeout' must be an int64_param (microseconds)"),
        ({"sequence_start": 1}, "parameter 'sequence_start' must be a bool_param"),
        ({"sequence_id": True}, "parameter 'sequence_id' must be an int64_param or string_param"),
    ):
        expect_rpc_error(
            lambda parameters=parameters: oip.ModelInfer(
                with_parameters(infer_request(linear, X), **parameters)
            ),
            invalid,
            text,
        )
    # No model here has priority levels: as Triton then, any priority is served alike.
    answer = oip.ModelInfer(with_parameters(infer_request(linear, X), priority=3, timeout=60_000_000))
    np.testing.assert_allclose(output(answer), X @ (W * 2), rtol=1e-6)


def test_timeout_parameter_drops_a_request_that_waits_longer_in_the_queue(
    oip, inference, channel, expect_rpc_error
) -> None:
    # Triton's `timeout` (microseconds): a request still queued when it passes is not run. 2048
    # rows of this model take milliseconds, so the request queues for a worker, which finds its
    # 1 us passed.
    upload(channel, "slow", slow_model())
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="slow"),
            config=inference_pb2.ServingConfig(max_batch_size=2048, instances=1),
        )
    )
    rows = np.ones((2048, 384), dtype=np.float32)

    def request(timeout_us: int) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="slow")
        r.inputs.add(name="x", datatype="FP32", shape=rows.shape)
        r.raw_input_contents.append(rows.tobytes())
        return with_parameters(r, timeout=timeout_us)

    expect_rpc_error(
        lambda: oip.ModelInfer(request(1)),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "it was not run",
    )
    assert list(oip.ModelInfer(request(60_000_000)).outputs[0].shape) == [2048, 384]
    (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name="slow")).model_stats
    assert (stats.inference_stats.fail.count, stats.execution_count) == (1, 1)


def test_onnxruntime_errors_reach_the_client_without_its_source_locations(
    oip, channel, expect_rpc_error
) -> None:
    # onnxruntime's messages name its C++ source file, line and function, and the check that
    # failed: the build machine's internals. What went wrong (the shapes) still reaches the client.
    upload(channel, "one-row", reshape_model([1, 4]))
    upload(channel, "never", reshape_model([3]))
    leaks = ("/onnxruntime_src", ".h:", "ReshapeHelper", "was false", "[ONNXRuntimeError]")

    def request(model: str) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name=model)
        r.inputs.add(name="x", datatype="FP32", shape=X.shape)
        r.raw_input_contents.append(X.tobytes())
        return r

    failed_run = expect_rpc_error(
        lambda: oip.ModelInfer(request("one-row")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'one-row' version 1 could not run this request: Non-zero status code returned while "
        "running Reshape node. Name:'' Status Message: The input tensor cannot be reshaped to the "
        "requested shape. Input shape:{2,4}, requested shape:{1,4}",
    )
    failed_load = expect_rpc_error(
        lambda: oip.ModelInfer(request("never")),
        grpc.StatusCode.NOT_FOUND,
        "warm-up of model 'never' version 1 failed on random inputs of its signature: Non-zero status "
        "code returned while running Reshape node. Name:'' Status Message: The input tensor cannot be "
        "reshaped to the requested shape. Input shape:{1,4}, requested shape:{3}",
    )
    (reason,) = [
        m.reason for m in oip.RepositoryIndex(pb.RepositoryIndexRequest()).models if m.name == "never"
    ]
    for text in (failed_run.details(), failed_load.details(), reason):
        assert not [leak for leak in leaks if leak in text], text


def test_a_version_that_failed_to_load_is_in_the_index_but_has_no_statistics(
    oip, linear, channel, expect_rpc_error
) -> None:
    # As Triton: the repository index lists it UNAVAILABLE with the reason; statistics are the
    # ready versions', and a version that never loaded has none to show (not a row of zeros).
    upload(channel, "never", reshape_model([3]))
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="never")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "warm-up of model 'never' version 1 failed",
    )
    index = {
        (m.name, m.version): (m.state, m.reason)
        for m in oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    }
    state, reason = index[("never", "1")]
    assert state == "UNAVAILABLE" and reason.startswith("warm-up of model 'never' version 1 failed")
    assert index[(linear, "2")] == ("READY", "")
    every = oip.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert [(s.name, s.version) for s in every] == [(linear, "2")]
    for request in (
        pb.ModelStatisticsRequest(name="never"),
        pb.ModelStatisticsRequest(name="never", version="1"),
    ):
        expect_rpc_error(
            lambda request=request: oip.ModelStatistics(request),
            grpc.StatusCode.NOT_FOUND,
            "model 'never' version 1 failed to load, so it has no statistics: warm-up of model 'never' "
            "version 1 failed",
        )


def test_a_repository_load_of_a_model_held_back_by_a_version_that_cannot_warm_loads_the_one_it_serves(
    oip, linear, channel, caplog
) -> None:
    # serving.autoload on: requests stay on version 2 while version 3 cannot warm; loading the
    # model (no version named) loads what it serves, rather than failing on version 3 again.
    assert oip.ModelInfer(infer_request(linear, X)).model_version == "2"
    upload(channel, linear, reshape_model([3]))  # every run fails: it cannot warm up
    _wait_logged(caplog, "stays on version 2: version 3 it now names failed to load")
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    assert oip.ModelInfer(infer_request(linear, X)).model_version == "2"


# An ONNX node's name, which onnxruntime's error for a run that fails quotes: the model's author
# chose it, and it reads as the registry's fixes.
FIX_WORDS_NODE = "ListVersions lists them; create it with CreateModel"


def test_the_registry_s_fix_words_in_a_load_error_stay_as_the_model_names_them(
    oip, channel, expect_rpc_error
) -> None:
    """Only the fix that ends a message is put in a Triton user's words: the same words quoted
    earlier (a node's name in the error of a load that failed) are the model's, not a fix."""
    upload(channel, "named", reshape_model([3], node_name=FIX_WORDS_NODE))
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="named")),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Name:'{FIX_WORDS_NODE}'",
    )
    for call in (
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name="named")),
        lambda: oip.ModelInfer(infer_request("named", X)),
    ):
        error = expect_rpc_error(call, grpc.StatusCode.NOT_FOUND, f"Name:'{FIX_WORDS_NODE}'")
        assert "tessera models" not in error.details(), error.details()


def _warming(inference, model: str) -> None:
    """Return once `model`'s version is warming up (its LoadModel began and has not finished)."""
    for _ in range(10_000):
        states = [m.state for m in inference.ListLoaded(inference_pb2.ListLoadedRequest(model=model)).models]
        if states == [inference_pb2.LOAD_STATE_WARMING]:
            return
        assert states in ([], [inference_pb2.LOAD_STATE_LOADING]), states
    raise AssertionError(f"{model} never warmed up")


def _load_slowly(inference, channel, model: str) -> grpc.Future:
    """Begin loading `model` with max_batch_size 4 and a thousand warm-up runs (a second or so)."""
    upload(channel, model, slow_model())
    loading = inference.LoadModel.future(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=model),
            config=inference_pb2.ServingConfig(max_batch_size=4, warmup_runs=1000),
        )
    )
    _warming(inference, model)
    return loading


def slow_request(model: str) -> pb.ModelInferRequest:
    rows = np.ones((1, 384), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=rows.shape)
    request.raw_input_contents.append(rows.tobytes())
    return request


def test_a_request_during_a_load_waits_for_it_and_keeps_its_config(oip, inference, channel) -> None:
    # The request autoloads the version it needs; finding it loaded (by then) with the operator's
    # config, it must be served by it, not load it again with the defaults.
    loading = _load_slowly(inference, channel, "slow")
    answer = oip.ModelInfer(slow_request("slow"))
    assert list(answer.outputs[0].shape) == [1, 384]
    assert loading.result().config.max_batch_size == 4
    assert oip.ModelConfig(pb.ModelConfigRequest(name="slow")).config.max_batch_size == 4


def test_without_autoload_a_version_still_loading_is_unavailable_not_unloaded(
    start_daemon, expect_rpc_error
) -> None:
    # As Triton answers a version not ready yet: a version named UNAVAILABLE, so a client
    # retries instead of being told to load what is being loaded; no version named, NOT_FOUND
    # (none is available to the request yet), as for any version not ready.
    channel = start_daemon(**{"serving.autoload": "false"}).channel()
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    loading = _load_slowly(inference, channel, "slow")
    named = slow_request("slow")
    named.model_version = "1"
    for request, code in (
        (named, grpc.StatusCode.UNAVAILABLE),
        (slow_request("slow"), grpc.StatusCode.NOT_FOUND),
    ):
        expect_rpc_error(
            lambda request=request: oip.ModelInfer(request),
            code,
            "model 'slow' version 1 is still loading; retry once it is ready (ModelReady, or state "
            "READY in ListLoaded)",
        )
    # Metadata needs no loaded version: the registry's signature, and the config being loaded.
    assert [t.name for t in oip.ModelMetadata(pb.ModelMetadataRequest(name="slow")).inputs] == ["x"]
    assert oip.ModelConfig(pb.ModelConfigRequest(name="slow", version="1")).config.max_batch_size == 4
    loading.result()
    assert list(oip.ModelInfer(slow_request("slow")).outputs[0].shape) == [1, 384]
    # A version whose load failed is not loaded, and the answer says why.
    upload(channel, "never", reshape_model([3]))
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="never")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "warm-up of model 'never' version 1 failed",
    )
    never = slow_request("never")
    never.inputs[0].shape[:] = [1, 4]
    never.raw_input_contents[0] = np.ones((1, 4), np.float32).tobytes()
    expect_rpc_error(
        lambda: oip.ModelInfer(never),
        grpc.StatusCode.NOT_FOUND,
        "model 'never' version 1 is not loaded (its last load failed: warm-up of model 'never' version 1 "
        "failed on random inputs of its signature: Non-zero status code",
    )


def test_repository_index_names_a_version_loading_as_triton_does(oip, inference, channel) -> None:
    loading = _load_slowly(inference, channel, "slow")
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.name, m.version, m.state) for m in index] == [("slow", "1", "LOADING")]
    assert list(oip.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models) == []
    loading.result()
    index = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert [(m.name, m.version, m.state) for m in index] == [("slow", "1", "READY")]


def test_typed_contents_out_of_their_datatypes_range_are_invalid(oip, linear, expect_rpc_error) -> None:
    # int_contents and uint_contents carry 32-bit values for the narrower integer types; one
    # that does not fit is a wrong request (Triton would keep its low bytes: another number).
    for datatype, field, value, bounds in (
        ("INT8", "int_contents", 300, "-128..127"),
        ("INT16", "int_contents", -40000, "-32768..32767"),
        ("UINT8", "uint_contents", 256, "0..255"),
        ("UINT16", "uint_contents", 70000, "0..65535"),
    ):
        request = pb.ModelInferRequest(model_name=linear)
        tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
        getattr(tensor.contents, field).extend([1, value])
        expect_rpc_error(
            lambda request=request: oip.ModelInfer(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input 'x' has {value} in contents.{field}, outside {datatype}'s range {bounds}",
        )


def test_a_shape_no_array_can_have_is_invalid_argument(oip, inference, linear, expect_rpc_error) -> None:
    # No elements, but dimensions numpy refuses to make even an empty array of: it was INTERNAL.
    refused = (
        "input 'x' has shape [1099511627776, 1099511627776, 0]: its dimensions other than 0 multiply to "
        f"{2**82} bytes of {{}}, more than an array can span (9223372036854775807 bytes), though it "
        "holds no values; send the shape its data has"
    )
    shape = [2**40, 2**40, 0]
    raw = pb.ModelInferRequest(model_name=linear, raw_input_contents=[b""])
    raw.inputs.add(name="x", datatype="FP32", shape=shape)
    typed = pb.ModelInferRequest(model_name=linear)
    typed.inputs.add(name="x", datatype="FP32", shape=shape).contents.SetInParent()
    for request in (raw, typed):
        expect_rpc_error(
            lambda request=request: oip.ModelInfer(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            refused.format("FP32"),
        )
    predict = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=linear),
        inputs=[common_pb2.Tensor(name="x", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=shape)],
    )
    expect_rpc_error(
        lambda: inference.Predict(predict),
        grpc.StatusCode.INVALID_ARGUMENT,
        refused.format("DATA_TYPE_FLOAT32"),
    )


def test_a_shape_of_more_dimensions_than_an_array_has_is_invalid_argument(
    oip, inference, linear, expect_rpc_error
) -> None:
    # numpy makes no array of more than 64 dimensions: its ValueError was INTERNAL.
    refused = "input 'x' has 65 dimensions; an array has at most 64: send the shape its data has"
    shape = [1] * 65
    raw = pb.ModelInferRequest(model_name=linear, raw_input_contents=[bytes(4)])
    raw.inputs.add(name="x", datatype="FP32", shape=shape)
    typed = pb.ModelInferRequest(model_name=linear)
    typed.inputs.add(name="x", datatype="FP32", shape=shape).contents.fp32_contents.append(0.0)
    for request in (raw, typed):
        expect_rpc_error(
            lambda request=request: oip.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, refused
        )
    predict = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=linear),
        inputs=[common_pb2.Tensor(name="x", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=shape, data=bytes(4))],
    )
    expect_rpc_error(lambda: inference.Predict(predict), grpc.StatusCode.INVALID_ARGUMENT, refused)


def test_statistics_of_a_version_without_a_model_name_are_refused(oip, linear, expect_rpc_error) -> None:
    oip.ModelInfer(infer_request(linear, X, version="2"))
    # Every ready version's statistics (version 2's) answered a request for version 1's.
    expect_rpc_error(
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(version="1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request names version '1' but no model; send the model's name with it, or neither for "
        "the statistics of every ready version",
    )
    assert [s.version for s in oip.ModelStatistics(pb.ModelStatisticsRequest()).model_stats] == ["2"]


@pytest.fixture
def shm_object() -> Iterator[str]:
    """A 256-byte POSIX shared-memory object of the test's own (its key), unlinked afterwards;
    the object must still be there then (the daemon never unlinks a client's object)."""
    key = f"/tessera-test-{uuid.uuid4().hex}"
    path = Path("/dev/shm") / key[1:]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 256)
    finally:
        os.close(fd)
    yield key
    kept = path.exists()
    path.unlink(missing_ok=True)
    assert kept, f"the daemon unlinked the client's shared-memory object {key}"


def test_a_daemon_stopping_leaves_the_clients_shared_memory_object(shm_object: str, oip) -> None:
    # shm_object comes first: it is set up before the daemon and checked after the daemon stopped
    # with the region still registered.
    oip.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="r", key=shm_object, byte_size=256)
    )
    assert list(oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["r"]


def test_tensors_in_system_shared_memory_are_read_and_written_there(
    oip, channel, shm_object: str, expect_rpc_error
) -> None:
    upload(channel, "two", two_output_model())
    path = Path("/dev/shm") / shm_object[1:]
    with path.open("r+b") as f:
        f.seek(64)
        f.write(X.tobytes())
    oip.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="io", key=shm_object, offset=64, byte_size=192)
    )
    status = oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="io"))
    assert dict(status.regions) == {
        "io": pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name="io", key=shm_object, offset=64, byte_size=192
        )
    }
    # x from the region; a into the region after x, b answered in the response as usual.
    request = pb.ModelInferRequest(model_name="two", id="shm")
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    x.parameters["shared_memory_region"].string_param = "io"
    x.parameters["shared_memory_byte_size"].int64_param = 32
    a = request.outputs.add(name="a")
    a.parameters["shared_memory_region"].string_param = "io"
    a.parameters["shared_memory_byte_size"].int64_param = 64
    a.parameters["shared_memory_offset"].int64_param = 32
    request.outputs.add(name="b")
    response = oip.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["a", "b"]
    assert dict(response.outputs[0].parameters) == {
        "shared_memory_region": pb.InferParameter(string_param="io"),
        "shared_memory_byte_size": pb.InferParameter(int64_param=24),
        "shared_memory_offset": pb.InferParameter(int64_param=32),
    }
    # As Triton: one raw_output_contents entry per output, empty for one in shared memory.
    assert response.raw_output_contents[0] == b""
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[1], np.float32).reshape(2, 4), X + X
    )
    written = path.read_bytes()[64 + 32 : 64 + 56]
    np.testing.assert_allclose(np.frombuffer(written, np.float32).reshape(2, 3), X @ W, rtol=1e-6)
    # The streaming variant too: a with 3 * x, from x changed in the region.
    with path.open("r+b") as f:
        f.seek(64)
        f.write((3 * X).tobytes())
    (streamed,) = oip.ModelStreamInfer(iter([request]))
    assert streamed.error_message == "" and streamed.infer_response.raw_output_contents[0] == b""
    written = path.read_bytes()[64 + 32 : 64 + 56]
    np.testing.assert_allclose(np.frombuffer(written, np.float32).reshape(2, 3), 3 * X @ W, rtol=1e-6)

    x.parameters["shared_memory_byte_size"].int64_param = 36
    expect_rpc_error(
        lambda: oip.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x' has shared_memory_byte_size 36, but its shape and datatype need 32 bytes",
    )
    x.parameters["shared_memory_byte_size"].int64_param = 32
    a.parameters["shared_memory_byte_size"].int64_param = 8
    expect_rpc_error(
        lambda: oip.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output 'a' has 24 bytes, more than the 8 of its shared_memory_byte_size in region 'io'",
    )
    expect_rpc_error(
        lambda: oip.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="io", key=shm_object, byte_size=8)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "shared-memory region 'io' is already registered",
    )
    oip.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="io"))
    expect_rpc_error(
        lambda: oip.ModelInfer(request),
        grpc.StatusCode.NOT_FOUND,
        "input 'x' names shared-memory region 'io', which is not registered",
    )
    expect_rpc_error(
        lambda: oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="io")),
        grpc.StatusCode.NOT_FOUND,
        "no system shared-memory region 'io' is registered",
    )
    assert path.exists()


def test_registering_more_regions_than_the_setting_allows_is_resource_exhausted(
    shm_object: str, start_daemon, expect_rpc_error
) -> None:
    # Each region holds a file descriptor until it is unregistered.
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(
        start_daemon(**{"serving.max_shared_memory_regions": 2}).channel()
    )

    def register(name: str) -> object:
        return oip.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=name, key=shm_object, byte_size=8)
        )

    register("a")
    register("b")
    expect_rpc_error(
        lambda: register("c"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "2 system shared-memory regions are registered, as many as serving.max_shared_memory_regions",
    )
    oip.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="a"))
    register("c")
    status = oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert sorted(status.regions) == ["b", "c"]


def test_registering_shared_memory_checks_the_object_and_the_bounds(
    oip, shm_object: str, expect_rpc_error
) -> None:
    def register(key: str, offset: int, byte_size: int) -> object:
        return oip.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key=key, offset=offset, byte_size=byte_size)
        )

    expect_rpc_error(
        lambda: register("/tessera-test-absent", 0, 8),
        grpc.StatusCode.NOT_FOUND,
        "there is no shared-memory object '/tessera-test-absent'",
    )
    expect_rpc_error(
        lambda: register("/../etc/passwd", 0, 8),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not the name of a POSIX shared-memory object",
    )
    expect_rpc_error(
        lambda: register(shm_object, 200, 100),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has 256 bytes, but the region asks for 300 (offset plus byte_size)",
    )
    assert not oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    register(shm_object, 0, 256)
    oip.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    assert not oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions


def test_a_datatype_mismatch_is_told_in_the_protocols_datatype_names(oip, linear, expect_rpc_error) -> None:
    # An Open Inference Protocol client sends FP64, not float64: the answer names datatypes as
    # it does (Triton: "data-type is 'FP64', but model ... expects 'FP32'").
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X.astype(np.float64), datatype="FP64")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x' has datatype FP64; model 'linear' version 2 expects FP32",
    )
    renamed = infer_request(linear, X)
    renamed.inputs[0].name = "z"
    expect_rpc_error(
        lambda: oip.ModelInfer(renamed),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'z' is not an input of model 'linear' version 2; its inputs are x FP32[-1, 4]",
    )


def test_reserved_triton_parameters_are_refused_unless_triton_takes_them(
    oip, linear, expect_rpc_error
) -> None:
    # As Triton: keys starting with triton_ are its own, and one it does not know is refused
    # (ignored, a typo such as triton_enable_empty_final_respons would go unnoticed).
    for key in ("triton_foo", "triton_enable_empty_final_respons"):
        expect_rpc_error(
            lambda key=key: oip.ModelInfer(with_parameters(infer_request(linear, X), **{key: True})),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"parameter keys starting with 'triton_' are reserved for Triton usage; the only one "
            f"allowed is triton_enable_empty_final_response, got {key!r}",
        )
    expect_rpc_error(
        lambda: oip.ModelInfer(
            with_parameters(infer_request(linear, X), triton_enable_empty_final_response="yes")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter 'triton_enable_empty_final_response' must be a bool_param",
    )
    # tritonclient's async_stream_infer(enable_empty_final_response=True): clients then wait for
    # an answer marked triton_final_response; every answer here is its request's last.
    flagged = with_parameters(infer_request(linear, X), triton_enable_empty_final_response=True)
    (streamed,) = oip.ModelStreamInfer(iter([flagged]))
    assert not streamed.error_message
    assert streamed.infer_response.parameters["triton_final_response"].bool_param
    (plain,) = oip.ModelStreamInfer(iter([infer_request(linear, X)]))
    assert "triton_final_response" not in plain.infer_response.parameters
    np.testing.assert_allclose(output(oip.ModelInfer(flagged)), X @ (W * 2), rtol=1e-6)


def test_requests_do_not_load_again_a_version_whose_load_failed(oip, channel, expect_rpc_error) -> None:
    # As Triton keeps a model that failed to load UNAVAILABLE until it is loaded explicitly: each
    # request loading it again would fail as slowly as the load, for the same reason.
    upload(channel, "never", reshape_model([3]))
    never = infer_request("never", np.ones((1, 4), np.float32))
    del never.outputs[:]
    failed = "warm-up of model 'never' version 1 failed on random inputs of its signature"
    # The request that loads it is answered as the later ones are: its model is not ready.
    error = expect_rpc_error(
        lambda: oip.ModelInfer(never),
        grpc.StatusCode.NOT_FOUND,
        f"model 'never' version 1 failed to load: {failed}",
    )
    assert "\n" not in error.details()  # onnxruntime ends its messages with one
    named = infer_request("never", np.ones((1, 4), np.float32), version="1")
    del named.outputs[:]
    # As Triton answers a model not ready: no version named, NOT_FOUND (none is available to the
    # request); a version named, UNAVAILABLE.
    for request, code in ((never, grpc.StatusCode.NOT_FOUND), (named, grpc.StatusCode.UNAVAILABLE)):
        error = expect_rpc_error(
            lambda request=request: oip.ModelInfer(request),
            code,
            "model 'never' version 1 failed to load, and requests do not load it again: warm-up of "
            "model 'never' version 1 failed",
        )
        assert "load it with LoadModel or RepositoryModelLoad" in error.details()
        assert "\n" not in error.details()
    (index,) = oip.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert (index.version, index.state) == ("1", "UNAVAILABLE") and index.reason.startswith(failed)
    # An explicit load tries again (and fails again, the artifact being what it is) ...
    expect_rpc_error(
        lambda: oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="never")),
        grpc.StatusCode.INVALID_ARGUMENT,
        failed,
    )
    # ... and so does a request once the version is unloaded.
    oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="never"))
    expect_rpc_error(lambda: oip.ModelInfer(never), grpc.StatusCode.NOT_FOUND, failed)


def test_metadata_and_config_describe_a_version_without_loading_it(oip, inference, linear) -> None:
    # As Triton, which never loads a model for a metadata call: perf_analyzer and tritonclient
    # scripts ask for metadata and config of every model they list, and would load them all.
    metadata = oip.ModelMetadata(pb.ModelMetadataRequest(name=linear, version="1"))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (linear, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("y", "FP32", [-1, 3])]
    latest = oip.ModelMetadata(pb.ModelMetadataRequest(name=linear))
    assert list(latest.versions) == ["2"]  # none is ready: the one a request would go to
    # The config any load without one gives it (a request's, or RepositoryModelLoad's).
    config = oip.ModelConfig(pb.ModelConfigRequest(name=linear, version="1")).config
    assert (config.max_batch_size, [list(i.dims) for i in config.input]) == (32, [[4]])
    assert [g.count for g in config.instance_group] == [2]
    assert list(inference.ListLoaded(inference_pb2.ListLoadedRequest()).models) == []
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear, version="1")).ready
    assert [m.version for m in oip.RepositoryIndex(pb.RepositoryIndexRequest()).models] == [""]
    # Loaded, the version is described as it runs.
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=linear, version=1),
            config=inference_pb2.ServingConfig(max_batch_size=4, instances=1),
        )
    )
    config = oip.ModelConfig(pb.ModelConfigRequest(name=linear, version="1")).config
    assert (config.max_batch_size, [g.count for g in config.instance_group]) == (4, [1])
    assert list(oip.ModelMetadata(pb.ModelMetadataRequest(name=linear)).versions) == ["1"]


def test_a_missing_model_or_version_says_what_a_triton_user_can_do(oip, linear, expect_rpc_error) -> None:
    """The registry's hints name its RPCs (CreateModel), which a Triton client cannot call."""
    register = "register it with `tessera models push MODEL FILE` or tessera.v1.Registry's UploadVersion"
    not_found = grpc.StatusCode.NOT_FOUND
    for call in (
        lambda: oip.ModelInfer(infer_request("lineer", X)),
        lambda: oip.ModelMetadata(pb.ModelMetadataRequest(name="lineer")),
        lambda: oip.ModelConfig(pb.ModelConfigRequest(name="lineer")),
        lambda: oip.ModelStatistics(pb.ModelStatisticsRequest(name="lineer")),
        lambda: oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="lineer")),
    ):
        error = expect_rpc_error(
            call, not_found, f"model 'lineer' does not exist; did you mean 'linear'? Or {register}"
        )
        assert "CreateModel" not in error.details()
    expect_rpc_error(
        lambda: oip.ModelMetadata(pb.ModelMetadataRequest(name="absent")),
        not_found,
        f"model 'absent' does not exist; {register}",
    )
    expect_rpc_error(
        lambda: oip.ModelInfer(infer_request(linear, X, version="9")),
        not_found,
        "model 'linear' has no version 9 (the newest is 2; `tessera models versions MODEL` lists them)",
    )


def test_an_unload_sticks_only_without_autoload(oip, linear, start_daemon, expect_rpc_error) -> None:
    # With serving.autoload (the default) the next request loads the model again, unlike Triton.
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=linear))
    oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=linear))
    assert not oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready
    assert output(oip.ModelInfer(infer_request(linear, X))).shape == (2, 3)
    assert oip.ModelReady(pb.ModelReadyRequest(name=linear)).ready
    # Without it, as in Triton: unloaded stays unloaded until load_model.
    channel = start_daemon(**{"serving.autoload": "false"}).channel()
    strict = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    strict.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
    strict.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="linear"))
    expect_rpc_error(
        lambda: strict.ModelInfer(infer_request("linear", X)), grpc.StatusCode.NOT_FOUND, "linear"
    )
    assert not strict.ModelReady(pb.ModelReadyRequest(name="linear")).ready
    strict.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
    assert output(strict.ModelInfer(infer_request("linear", X))).shape == (2, 3)


def test_without_autoload_a_new_version_or_deployment_waits_for_load_model(
    start_daemon, expect_rpc_error, caplog
) -> None:
    # As Triton's explicit mode: what the registry registers or deploys loads, swaps and unloads
    # nothing; requests stay on the version loaded until load_model loads what they route to.
    channel = start_daemon(**{"serving.autoload": "false"}).channel()
    strict = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    upload(channel, "simple", linear_model(1.0))
    upload(channel, "simple", linear_model(2.0))
    strict.RepositoryModelLoad(
        load_request("simple", '{"max_batch_size": 4, "instance_group": [{"count": 1}]}')
    )

    def loaded() -> list[tuple[int, int]]:
        listed = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="simple")).models
        return [(m.version, m.config.max_batch_size) for m in listed]

    with caplog.at_level(logging.INFO, logger="tesserad"):
        assert upload(channel, "simple", linear_model(3.0)) == 3
        # An upload does not wait for the refresh (a Deploy does), which logs this as it ends.
        _wait_logged(
            caplog,
            "model 'simple' version 3 is not loaded (serving.autoload is off): the route of 'simple''s "
            "requests naming no version stays on version 2 until it is; load it with RepositoryModelLoad "
            "(POST /v2/repository/models/simple/load)",
        )
    assert loaded() == [(2, 4)]
    assert strict.ModelInfer(infer_request("simple", X)).model_version == "2"
    assert strict.ModelInfer(infer_request("simple", X, version="2")).model_version == "2"
    assert strict.ModelReady(pb.ModelReadyRequest(name="simple")).ready
    expect_rpc_error(
        lambda: strict.ModelInfer(infer_request("simple", X, version="3")),
        grpc.StatusCode.UNAVAILABLE,
        "model 'simple' version 3 is not loaded",
    )
    # load_model loads what requests are routed to now, and they go there once it returns; the
    # version they left is unloaded, as Triton's load_model keeps its latest version alone.
    strict.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
    assert [v for v, _ in loaded()] == [3]
    assert strict.ModelInfer(infer_request("simple", X)).model_version == "3"

    # A deployment (or a rollback) is routing, not a load: its new versions serve once loaded.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tesserad"):
        registry.Deploy(
            registry_pb2.DeployRequest(
                model="simple",
                routes=[registry_pb2.Route(version=3, weight=50), registry_pb2.Route(version=1, weight=50)],
            )
        )
    assert (
        "the deployment of 'simple' keeps serving version 3 until version 1 is loaded "
        "(serving.autoload is off); load it with RepositoryModelLoad (POST "
        "/v2/repository/models/simple/load)"
    ) in caplog.text
    assert [v for v, _ in loaded()] == [3]
    assert {strict.ModelInfer(infer_request("simple", X)).model_version for _ in range(4)} == {"3"}
    strict.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
    assert [v for v, _ in loaded()] == [1, 3]
    assert {strict.ModelInfer(infer_request("simple", X)).model_version for _ in range(4)} == {"1", "3"}


class _LockTellingOfWaiters:
    """The regions' lock itself, which sets `asked` when a thread asks for it: a read taking it
    is then under way, and held up while the test holds the lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.asked = threading.Event()

    def __enter__(self) -> bool:
        self.asked.set()
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(None, None, None)


@contextlib.contextmanager
def _a_shared_memory_read_held(daemon: InProcessDaemon, shm_object: str) -> Iterator[threading.Event]:
    """Model "two" and region "in", holding X, registered; while in the block, the regions'
    lock (which a read takes first) is held: the event yielded is set once a read asks for it.
    Holding it is the one way to keep a read in progress without timing it."""
    channel = daemon.channel()
    upload(channel, "two", two_output_model())
    (Path("/dev/shm") / shm_object[1:]).write_bytes(X.tobytes() + bytes(256 - X.nbytes))
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="in", key=shm_object, byte_size=X.nbytes)
    )
    memory = daemon.daemon._shared_memory
    lock = memory._lock
    telling = _LockTellingOfWaiters(lock)
    memory._lock = telling  # type: ignore[assignment]
    try:
        with lock:
            yield telling.asked
    finally:
        memory._lock = lock


def test_an_input_read_from_shared_memory_leaves_the_event_loop_answering(
    oip, daemon, shm_object: str
) -> None:
    """A shared-memory input is read (os.pread, as many bytes as the tensor has) off the event
    loop: the daemon answers ServerLive while the read waits for the regions' lock, and the
    inference once the lock is free."""
    request = pb.ModelInferRequest(model_name="two")
    x = request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    x.parameters["shared_memory_region"].string_param = "in"
    x.parameters["shared_memory_byte_size"].int64_param = X.nbytes
    request.outputs.add(name="b")
    with _a_shared_memory_read_held(daemon, shm_object) as reading:
        pending = oip.ModelInfer.future(request)
        assert reading.wait(30), "the inference never came to read its input"
        # The deadline only keeps a loop held by the read from hanging the test.
        assert oip.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    response = pending.result(timeout=60)
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], np.float32).reshape(X.shape), X + X
    )


def test_an_input_read_from_shared_memory_over_http_leaves_the_event_loop_answering(
    tmp_path: Path, shm_object: str
) -> None:
    """As over gRPC: the daemon answers /v2/health/live while an HTTP inference's read waits."""
    daemon = InProcessDaemon(daemon_settings(tmp_path, **{"serving.oip_http_listen": "127.0.0.1:0"})).start()
    base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(X.shape),
                "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": X.nbytes},
            }
        ],
        "outputs": [{"name": "b"}],
    }
    infer = urllib.request.Request(f"{base}/v2/models/two/infer", data=json.dumps(body).encode())
    try:
        with (
            concurrent.futures.ThreadPoolExecutor(1) as client,
            _a_shared_memory_read_held(daemon, shm_object) as reading,
        ):
            pending = client.submit(lambda: json.load(urllib.request.urlopen(infer, timeout=60)))
            assert reading.wait(30), "the inference never came to read its input"
            # The timeout only keeps a loop held by the read from hanging the test.
            with urllib.request.urlopen(f"{base}/v2/health/live", timeout=30) as live:
                assert live.status == 200
        (b,) = pending.result()["outputs"]
    finally:
        daemon.stop()
    np.testing.assert_array_equal(np.array(b["data"], np.float32).reshape(X.shape), X + X)


@contextlib.contextmanager
def _a_shared_memory_write_held(
    tmp_path: Path, shm_object: str
) -> Iterator[tuple[InProcessDaemon, HeldInThread]]:
    """A daemon (gRPC and HTTP) with model "two" and region "io" (the whole object) registered,
    whose first write into a region is held before its pwrite until `let_go`. The daemon starts
    within the hold: a trace function reaches only the threads started after it."""
    with HeldInThread(_Region.write, "os.pwrite(") as held:
        daemon = InProcessDaemon(
            daemon_settings(tmp_path, **{"serving.oip_http_listen": "127.0.0.1:0"})
        ).start()
        try:
            channel = daemon.channel()
            upload(channel, "two", two_output_model())
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name="io", key=shm_object, byte_size=256)
            )
            yield daemon, held
        finally:
            held.let_go.set()
            daemon.stop()
    assert held.raised == []


def _output_a_in_region(offset: int) -> pb.ModelInferRequest:
    """x in the request; a (X @ W, 24 bytes) into region "io" at `offset`, b in the answer."""
    request = pb.ModelInferRequest(model_name="two")
    request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    a = request.outputs.add(name="a")
    a.parameters["shared_memory_region"].string_param = "io"
    a.parameters["shared_memory_byte_size"].int64_param = 24
    a.parameters["shared_memory_offset"].int64_param = offset
    request.outputs.add(name="b")
    return request


def _region_a(shm_object: str, offset: int) -> np.ndarray:
    written = (Path("/dev/shm") / shm_object[1:]).read_bytes()[offset : offset + 24]
    return np.frombuffer(written, np.float32).reshape(2, 3)


def test_an_output_written_to_shared_memory_leaves_the_event_loop_answering(
    tmp_path: Path, shm_object: str
) -> None:
    """An output is written into its region (os.pwrite, as many bytes as the tensor has) off the
    event loop: ServerLive is answered while the write is held, and the answer and the region's
    bytes are right once it goes on. A call cancelled mid-write leaves the region registered and
    usable."""
    with _a_shared_memory_write_held(tmp_path, shm_object) as (daemon, held):
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
        pending = oip.ModelInfer.future(_output_a_in_region(0))
        assert held.reached.wait(30), "the inference never came to write its output"
        # The deadline only keeps a loop held by the write from hanging the test.
        assert oip.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        held.let_go.set()
        response = pending.result(timeout=60)
        assert [o.name for o in response.outputs] == ["a", "b"]
        assert response.raw_output_contents[0] == b""
        assert dict(response.outputs[0].parameters)["shared_memory_byte_size"].int64_param == 24
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[1], np.float32).reshape(X.shape), X + X
        )
        np.testing.assert_allclose(_region_a(shm_object, 0), X @ W, rtol=1e-6)


def test_an_output_write_cancelled_midway_leaves_its_region_registered_and_usable(
    tmp_path: Path, shm_object: str
) -> None:
    with _a_shared_memory_write_held(tmp_path, shm_object) as (daemon, held):
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel())
        pending = oip.ModelInfer.future(_output_a_in_region(0))
        assert held.reached.wait(30), "the inference never came to write its output"
        pending.cancel()
        # The deadline only keeps a loop held by the write from hanging the test.
        assert oip.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        held.let_go.set()
        status = oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="io"))
        assert list(status.regions) == ["io"]
        response = oip.ModelInfer(_output_a_in_region(64))
        assert response.raw_output_contents[0] == b""
        np.testing.assert_allclose(_region_a(shm_object, 64), X @ W, rtol=1e-6)


def test_an_output_written_to_shared_memory_over_http_leaves_the_event_loop_answering(
    tmp_path: Path, shm_object: str
) -> None:
    """As over gRPC: /v2/health/live is answered while the write is held; then the answer (b in
    JSON, a's place in its parameters) and the region's bytes are right."""
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}],
        "outputs": [
            {
                "name": "a",
                "parameters": {
                    "shared_memory_region": "io",
                    "shared_memory_byte_size": 24,
                    "shared_memory_offset": 128,
                },
            },
            {"name": "b"},
        ],
    }
    with (
        _a_shared_memory_write_held(tmp_path, shm_object) as (daemon, held),
        concurrent.futures.ThreadPoolExecutor(1) as client,
    ):
        base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
        infer = urllib.request.Request(f"{base}/v2/models/two/infer", data=json.dumps(body).encode())
        pending = client.submit(lambda: json.load(urllib.request.urlopen(infer, timeout=60)))
        assert held.reached.wait(30), "the inference never came to write its output"
        # The timeout only keeps a loop held by the write from hanging the test.
        with urllib.request.urlopen(f"{base}/v2/health/live", timeout=30) as live:
            assert live.status == 200
        held.let_go.set()
        a, b = pending.result()["outputs"]
    assert a["name"] == "a" and "data" not in a
    assert a["parameters"] == {
        "shared_memory_region": "io",
        "shared_memory_byte_size": 24,
        "shared_memory_offset": 128,
    }
    np.testing.assert_array_equal(np.array(b["data"], np.float32).reshape(X.shape), X + X)
    np.testing.assert_allclose(_region_a(shm_object, 128), X @ W, rtol=1e-6)


def test_a_full_queue_is_unavailable_as_triton_answers_it(oip, inference, channel) -> None:
    # Triton's "Exceeds maximum queue size" is UNAVAILABLE, which Triton clients' retry policies
    # retry; tessera's own Predict keeps RESOURCE_EXHAUSTED (test_serving_inference).
    upload(channel, "slow", slow_model())
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="slow"),
            config=inference_pb2.ServingConfig(max_queue_size=2, max_batch_size=64),
        )
    )
    rows = np.ones((64, 384), dtype=np.float32)
    futures = [oip.ModelInfer.future(infer_request("slow", rows)) for _ in range(24)]
    codes = {future.code() for future in futures}
    details = {future.details() for future in futures if future.code() != grpc.StatusCode.OK}
    assert codes == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert len(details) == 1 and "has 2 requests queued, its max_queue_size" in details.pop()


def test_a_config_names_the_version_it_describes_and_a_canary_s_split(oip, registry, linear) -> None:
    def parameters(**request: str) -> dict[str, str]:
        config = oip.ModelConfig(pb.ModelConfigRequest(**request)).config
        return {
            key: value.string_value for key, value in config.parameters.items() if key.startswith("tessera_")
        }

    assert parameters(name=linear) == {"tessera_version": "2"}
    registry.Deploy(
        registry_pb2.DeployRequest(
            model=linear,
            routes=[registry_pb2.Route(version=1, weight=90), registry_pb2.Route(version=2, weight=10)],
        )
    )
    assert parameters(name=linear) == {"tessera_version": "1", "tessera_traffic_split": "1:90,2:10"}
    # A request naming the version goes to it alone; a config read back loads again as it was.
    assert parameters(name=linear, version="2") == {"tessera_version": "2"}
    config = oip.ModelConfig(pb.ModelConfigRequest(name=linear)).config
    oip.RepositoryModelLoad(load_request(linear, json_format.MessageToJson(config)))


def _policy_ready(inference, model: str) -> list[int]:
    loaded = inference.ListLoaded(inference_pb2.ListLoadedRequest(model=model)).models
    return [m.version for m in loaded if m.state == inference_pb2.LOAD_STATE_READY]


def _load_policy(oip, model: str, config: dict[str, Any]) -> None:
    oip.RepositoryModelLoad(load_request(model, json.dumps(config)))


def _served_by(oip, model: str, version: str = "") -> str:
    return oip.ModelInfer(infer_request(model, X, version=version)).model_version


def test_versionless_requests_follow_the_deployment_over_a_version_policy(
    oip, inference, registry, channel, expect_rpc_error
) -> None:
    for scale in (1.0, 2.0, 3.0):
        upload(channel, "deployed", linear_model(scale))
    registry.Deploy(
        registry_pb2.DeployRequest(model="deployed", routes=[registry_pb2.Route(version=1, weight=100)])
    )
    _load_policy(oip, "deployed", {"version_policy": {"specific": {"versions": [1, 2]}}})
    assert _policy_ready(inference, "deployed") == [1, 2]
    # As Predict: the deployment's version, not the policy's highest.
    assert _served_by(oip, "deployed") == "1"
    # A request naming a version loads it (autoload); requests naming none stay where they were.
    assert _served_by(oip, "deployed", "3") == "3"
    assert _served_by(oip, "deployed") == "1"
    # A policy leaving the deployment's version out is refused, naming how to include it.
    expect_rpc_error(
        lambda: _load_policy(oip, "deployed", {"version_policy": {"specific": {"versions": [2, 3]}}}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "config field 'version_policy' chooses versions [2, 3] of model 'deployed', but requests naming no "
        "version are routed to version 1 by its deployment (tessera models deploy deployed "
        'VERSION=PERCENT... changes it): include it in the policy ({"version_policy": {"specific": '
        '{"versions": [1, 2, 3]}}})',
    )
    assert _policy_ready(inference, "deployed") == [1, 2, 3]


def test_versionless_requests_stay_within_the_versions_a_policy_chose(
    oip, inference, registry, channel
) -> None:
    for scale in (1.0, 2.0, 3.0):
        upload(channel, "chosen", linear_model(scale))
    # A repeated version is one version.
    _load_policy(oip, "chosen", {"version_policy": {"specific": {"versions": [2, 1, 2]}}})
    config = oip.ModelConfig(pb.ModelConfigRequest(name="chosen")).config
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert _served_by(oip, "chosen") == "2"
    # Version 3, loaded by a request naming it, is not one the policy chose.
    assert _served_by(oip, "chosen", "3") == "3"
    assert _served_by(oip, "chosen") == "2"
    # A version deleted leaves the policy: requests naming none go to the highest left.
    registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="chosen", version=2))
    assert _served_by(oip, "chosen") == "1"
    config = oip.ModelConfig(pb.ModelConfigRequest(name="chosen")).config
    assert list(config.version_policy.specific.versions) == [1]


def test_a_long_specific_list_is_refused_before_any_work(oip, linear, expect_rpc_error) -> None:
    expect_rpc_error(
        lambda: _load_policy(oip, linear, {"version_policy": {"specific": {"versions": [1] * 300_000}}}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "config field 'version_policy.specific.versions' lists 300000 versions; one load serves at most 16",
    )


def test_a_policy_load_that_fails_for_one_version_changes_nothing(
    oip, inference, channel, expect_rpc_error
) -> None:
    upload(channel, "mixed", linear_model(1.0))
    upload(channel, "mixed", linear_model(2.0))
    upload_weights(channel, "mixed", cnn4d_weights())
    _load_policy(oip, "mixed", {"max_batch_size": 4, "version_policy": {"specific": {"versions": [1]}}})
    expect_rpc_error(
        lambda: _load_policy(
            oip,
            "mixed",
            {
                "platform": "onnxruntime_onnx",
                "max_batch_size": 8,
                "version_policy": {"specific": {"versions": [1, 2, 3]}},
            },
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the onnx runtime needs an ONNX version",
    )
    # As Triton leaves a model whose reload failed: its versions, config and policy as they were.
    (loaded,) = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="mixed")).models
    assert (loaded.version, loaded.config.max_batch_size) == (1, 4)
    config = oip.ModelConfig(pb.ModelConfigRequest(name="mixed")).config
    assert list(config.version_policy.specific.versions) == [1]


def test_a_policy_goes_with_its_model_s_unload_and_deletion(oip, inference, registry, channel) -> None:
    def policy() -> bool:
        return oip.ModelConfig(pb.ModelConfigRequest(name="gone")).config.HasField("version_policy")

    upload(channel, "gone", linear_model(1.0))
    upload(channel, "gone", linear_model(2.0))
    _load_policy(oip, "gone", {"version_policy": {"specific": {"versions": [1, 2]}}})
    inference.UnloadModel(inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="gone")))
    assert not policy()

    _load_policy(oip, "gone", {"version_policy": {"specific": {"versions": [1, 2]}}})
    registry.DeleteModel(registry_pb2.DeleteModelRequest(name="gone", force=True))
    upload(channel, "gone", linear_model(3.0))
    upload(channel, "gone", linear_model(4.0))
    # The daemon learns of the deletion in the background, as serving does of every change.
    ends = time.monotonic() + 30
    while policy():
        assert time.monotonic() < ends, "a new model 'gone' still has the deleted one's version_policy"
        time.sleep(0.05)


def test_one_model_s_repository_load_does_not_wait_for_another_s(tmp_path: Path) -> None:
    # Model "held"'s load is held before it reads its config: model "free"'s load and unload go on.
    with HeldInThread(OpenInference._load, "config_of(text, name, described)") as held:
        daemon = InProcessDaemon(daemon_settings(tmp_path)).start()
        try:
            channel = daemon.channel()
            upload(channel, "held", linear_model(1.0))
            upload(channel, "free", linear_model(1.0))
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            holding = oip.RepositoryModelLoad.future(pb.RepositoryModelLoadRequest(model_name="held"))
            assert held.reached.wait(30)
            oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="free"), timeout=20)
            assert oip.ModelReady(pb.ModelReadyRequest(name="free")).ready
            oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="free"), timeout=20)
            held.let_go.set()
            holding.result(timeout=30)
            assert oip.ModelReady(pb.ModelReadyRequest(name="held")).ready
        finally:
            held.let_go.set()
            daemon.stop()
    assert held.raised == []


def test_a_version_registered_later_leaves_the_versions_a_policy_chose_loaded(
    oip, inference, registry, channel
) -> None:
    for scale in (1.0, 2.0, 3.0):
        upload(channel, "later", linear_model(scale))
    # Requests naming no version are routed (to latest, version 3) before the policy's load.
    assert _served_by(oip, "later") == "3"
    _load_policy(oip, "later", {"version_policy": {"latest": {"num_versions": 2}}})
    assert _policy_ready(inference, "later") == [2, 3]
    # Requests naming no version follow latest to version 4 (autoload): the policy's stay loaded.
    upload(channel, "later", linear_model(4.0))
    # SetAlias answers once serving routes the model by every change before it: the upload's too.
    registry.SetAlias(registry_pb2.SetAliasRequest(model="later", alias="newest", version=4))
    assert {2, 3} <= set(_policy_ready(inference, "later"))
    assert _served_by(oip, "later") == "3"


def test_without_autoload_a_policy_of_all_keeps_every_version_loaded(start_daemon, caplog) -> None:
    # Loading the policy's versions one by one moved the route off version 2 as version 3 loaded,
    # and the refresh unloaded 2 (loaded again later in the loop, or not at all): requests naming
    # version 2 failed meanwhile.
    caplog.set_level(logging.INFO, logger="tesserad")
    channel = start_daemon(**{"serving.autoload": False}).channel()
    for scale in (1.0, 2.0):
        upload(channel, "every", linear_model(scale))
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    _load_policy(oip, "every", {"max_batch_size": 4})
    upload(channel, "every", linear_model(3.0))
    _load_policy(oip, "every", {"version_policy": {"all": {}}})
    loaded = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="every")).models
    assert sorted(m.version for m in loaded if m.state == inference_pb2.LOAD_STATE_READY) == [1, 2, 3]
    assert _served_by(oip, "every") == "3"
    assert not [r for r in caplog.records if "unloaded version 2 of 'every'" in r.getMessage()]


def _held_on_production(start_daemon) -> tuple[Any, Any, Any]:
    """A daemon without autoload routing requests naming no version by alias production: model
    "prod" with version 2 serving them, and version 3 that production names since, not loaded."""
    channel = start_daemon(**{"serving.autoload": False, "serving.default_alias": "production"}).channel()
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "prod", linear_model(1.0))
    upload(channel, "prod", linear_model(2.0), alias="production")
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="prod"))
    upload(channel, "prod", linear_model(3.0))
    registry_pb2_grpc.RegistryStub(channel).SetAlias(
        registry_pb2.SetAliasRequest(model="prod", alias="production", version=3)
    )
    assert _served_by(oip, "prod") == "2"
    return channel, oip, inference_pb2_grpc.InferenceStub(channel)


def test_a_failed_policy_load_keeps_the_version_loaded_before_it_that_requests_go_to(
    start_daemon, caplog, expect_rpc_error
) -> None:
    # Loading version 3 moved the route off version 2 and the refresh unloaded 2; version 4 then
    # failed and the rollback unloaded 3: nothing served requests naming no version.
    caplog.set_level(logging.INFO, logger="tesserad")
    channel, oip, inference = _held_on_production(start_daemon)
    upload(channel, "prod", reshape_model([3]))  # cannot warm up
    expect_rpc_error(
        lambda: _load_policy(oip, "prod", {"version_policy": {"specific": {"versions": [2, 3, 4]}}}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "warm-up of model 'prod' version 4 failed",
    )
    assert _policy_ready(inference, "prod") == [2]
    assert _served_by(oip, "prod") == "2"
    assert not [r for r in caplog.records if "unloaded version 2 of 'prod'" in r.getMessage()]


def test_a_policy_may_leave_out_the_version_requests_stay_on_until_the_one_they_move_to_loads(
    start_daemon,
) -> None:
    _, oip, inference = _held_on_production(start_daemon)
    _load_policy(oip, "prod", {"version_policy": {"specific": {"versions": [3]}}})
    assert _policy_ready(inference, "prod") == [3]
    assert _served_by(oip, "prod") == "3"


def test_a_load_cancelled_by_its_deadline_holds_the_model_until_its_work_ends(tmp_path: Path) -> None:
    # The cancelled call released the model's lock while its thread went on loading: a second
    # load of the model ran alongside it.
    with HeldInThread(OpenInference._load, "config_of(text, name, described)") as held:
        daemon = InProcessDaemon(daemon_settings(tmp_path)).start()
        try:
            channel = daemon.channel()
            upload(channel, "cancelled", linear_model(1.0))
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.RepositoryModelLoadRequest(model_name="cancelled")
            first = oip.RepositoryModelLoad.future(request)
            assert held.reached.wait(30)
            first.cancel()
            # Waits for the first's work, still held: its own deadline passes.
            with pytest.raises(grpc.RpcError) as raised:
                oip.RepositoryModelLoad(request, timeout=1)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            held.let_go.set()
            oip.RepositoryModelLoad(request, timeout=30)
            assert oip.ModelReady(pb.ModelReadyRequest(name="cancelled")).ready
        finally:
            held.let_go.set()
            daemon.stop()
    assert held.raised == []

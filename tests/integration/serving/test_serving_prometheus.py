"""/metrics of a real daemon: Triton's nv_inference_* families, the store's gauges, process_*."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_models import linear_model, predict_request, reshape_model, slow_model, upload
from test_serving_inference import HeldInstance, until

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc

X = np.arange(8, dtype=np.float32).reshape(2, 4)
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def scrape(daemon, accept: str = OPENMETRICS) -> tuple[str, str]:
    """The page's content type and text, asked for as Prometheus asks (OpenMetrics first)."""
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept})) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[str, float]:
    """Each sample line's name{labels} -> value."""
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def infer_request(model: str, x: np.ndarray, version: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def failures(page: dict[str, float], model: str, version: str) -> dict[str, float]:
    """nv_inference_request_failure of a version by its `reason` label."""
    prefix = f'nv_inference_request_failure{{model="{model}",version="{version}",reason="'
    return {name[len(prefix) : -len('"}')]: value for name, value in page.items() if name.startswith(prefix)}


def settled_statistics(oip, model: str, version: str) -> pb.ModelStatistics:
    """ModelStatistics once two reads in a row agree (a request's answer-encoding time is
    recorded just after the client has its answer)."""
    request = pb.ModelStatisticsRequest(name=model, version=version)
    previous = oip.ModelStatistics(request).model_stats[0]
    while (current := oip.ModelStatistics(request).model_stats[0]) != previous:
        previous = current
    return current


def test_triton_metrics_are_the_model_statistics_and_survive_a_reset(daemon, oip, inference, linear) -> None:
    for _ in range(3):
        oip.ModelInfer(infer_request(linear, X, version="1"))
    for rows in (1, 5):
        inference.Predict(predict_request(linear, np.ones((rows, 4), np.float32), version=1))
    # Refused by the version's signature: failures, as in Triton.
    for refused in (
        lambda: oip.ModelInfer(infer_request(linear, np.ones((2, 5), np.float32), version="1")),
        lambda: inference.Predict(predict_request(linear, X.astype(np.float64), version=1)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            refused()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stats = settled_statistics(oip, linear, "1")
    content_type, text = scrape(daemon)
    assert stats == settled_statistics(oip, linear, "1")
    # Triton's exposition: text format 0.0.4 whatever the scraper prefers, counters without
    # `_total`, labelled by model and version.
    assert content_type.startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ):
        assert f"# TYPE {name} counter" in lines
    assert "# TYPE nv_inference_pending_request_count gauge" in lines
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["nv_inference_queue_duration_us"] == "counter" and types["process_cpu_seconds"] == "counter"
    got = {
        name.partition("{")[0]: value
        for name, value in samples(text).items()
        if name.startswith("nv_") and name.endswith('{model="linear",version="1"}')
    }
    io = stats.inference_stats
    assert failures(samples(text), linear, "1") == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 2}
    assert io.fail.count == 2 and io.fail.ns > 0
    assert got == {
        "nv_inference_request_success": io.success.count,
        "nv_inference_count": stats.inference_count,
        "nv_inference_exec_count": stats.execution_count,
        "nv_inference_request_duration_us": io.success.ns // 1000,
        "nv_inference_queue_duration_us": io.queue.ns // 1000,
        "nv_inference_compute_input_duration_us": io.compute_input.ns // 1000,
        "nv_inference_compute_infer_duration_us": io.compute_infer.ns // 1000,
        "nv_inference_compute_output_duration_us": io.compute_output.ns // 1000,
        "nv_inference_pending_request_count": 0,
    }
    assert (got["nv_inference_request_success"], got["nv_inference_count"]) == (5, 12)
    assert 0 < got["nv_inference_compute_infer_duration_us"] <= got["nv_inference_request_duration_us"]
    # GetStats's reset starts ModelStatistics again; a Prometheus counter never goes down.
    inference.GetStats(
        inference_pb2.GetStatsRequest(target=common_pb2.VersionRef(model=linear, version=1), reset=True)
    )
    assert settled_statistics(oip, linear, "1").inference_stats.success.count == 0
    assert settled_statistics(oip, linear, "1").inference_stats.fail.count == 0
    after = samples(scrape(daemon)[1])
    assert after['nv_inference_request_success{model="linear",version="1"}'] == 5
    assert failures(after, linear, "1")["OTHER"] == 2
    # Version 2 was never loaded: Triton lists only loaded versions.
    assert not any('version="2"' in name for name in after if name.startswith("nv_"))


def test_store_gauges_show_an_upload(daemon, channel) -> None:
    before = samples(scrape(daemon)[1])
    assert before["tessera_store_map_size_bytes"] == 2**30  # the tests' store.map_size
    # A twentieth of the map, in whole pages.
    assert 2**30 // 20 - 65536 < before["tessera_store_reserve_bytes"] <= 2**30 // 20
    assert before["tessera_store_filesystem_free_bytes"] > 0
    assert before["tessera_store_filesystem_size_bytes"] >= before["tessera_store_filesystem_free_bytes"]
    artifact = linear_model(3.0)
    upload(channel, "gauged", artifact)
    deadline = time.monotonic() + 30
    while (after := samples(scrape(daemon)[1]))["tessera_store_blobs"] == before["tessera_store_blobs"]:
        # A census walks again at most a tenth of the time; a tiny store's walk is short.
        assert time.monotonic() < deadline, "tessera_store_blobs never counted the upload"
        time.sleep(0.01)
    assert after["tessera_store_blobs"] == before["tessera_store_blobs"] + 1
    assert after["tessera_store_blob_bytes"] == before["tessera_store_blob_bytes"] + len(artifact)
    assert after["tessera_store_used_bytes"] >= before["tessera_store_used_bytes"] > 0
    assert after["process_cpu_seconds_total"] > 0 and after["process_resident_memory_bytes"] > 0


def test_triton_metrics_off_leaves_the_page_negotiated(start_daemon) -> None:
    daemon = start_daemon(**{"serving.triton_metrics": "false"})
    content_type, text = scrape(daemon)
    assert content_type.startswith("application/openmetrics-text")
    assert "nv_inference" not in text and "tessera_store_blobs" in text


def test_a_version_that_failed_to_load_has_no_serving_series_and_is_not_ready(
    daemon, channel, inference, linear
) -> None:
    broken = upload(channel, "broken", reshape_model([3]))  # every run fails: it cannot warm up
    load = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="broken", version=broken))
    with pytest.raises(grpc.RpcError) as err:
        inference.LoadModel(load)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    inference.Predict(predict_request(linear, X, version=1))
    text = scrape(daemon)[1]
    # Listed as FAILED by ListLoaded, but not served: its serving series are not there, as
    # Triton's; only tessera_model_ready says it is in the pool and not ready (what to alert on).
    assert 'model="linear"' in text
    broken_lines = [line for line in text.splitlines() if 'model="broken"' in line]
    assert broken_lines == ['tessera_model_ready{model="broken",version="1"} 0.0']


def test_cache_metrics_are_the_model_statistics_cache_figures(start_daemon, daemon) -> None:
    assert "nv_cache" not in scrape(daemon)[1]  # no budget: no cache, no cache families
    budget = 1 << 20
    cached = start_daemon(**{"serving.response_cache_size": budget})
    channel = cached.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "plain", linear_model(2.0))
    for model, cache in (("linear", True), ("plain", False)):
        inference.LoadModel(
            inference_pb2.LoadModelRequest(
                target=common_pb2.VersionRef(model=model, version=1),
                config=inference_pb2.ServingConfig(response_cache=cache),
            )
        )
    for _ in range(2):  # a miss, then a hit
        oip.ModelInfer(infer_request("linear", X, version="1"))
    stats = settled_statistics(oip, "linear", "1").inference_stats
    assert (stats.cache_hit.count, stats.cache_miss.count) == (1, 1)
    content_type, text = scrape(cached)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)
    labels = '{model="linear",version="1"}'
    assert {
        name: got[name + labels]
        for name in (
            "nv_cache_num_hits_per_model",
            "nv_cache_num_misses_per_model",
            "nv_cache_hit_duration_per_model",
            "nv_cache_miss_duration_per_model",
        )
    } == {
        "nv_cache_num_hits_per_model": stats.cache_hit.count,
        "nv_cache_num_misses_per_model": stats.cache_miss.count,
        "nv_cache_hit_duration_per_model": stats.cache_hit.ns // 1000,
        "nv_cache_miss_duration_per_model": stats.cache_miss.ns // 1000,
    }
    # A version loaded without the cache has no cache series, as a Triton model without it.
    assert not any(name.startswith("nv_cache") and "plain" in name for name in got)
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["nv_cache_num_hits_per_model"] == "counter" and types["nv_cache_util"] == "gauge"
    assert got["nv_cache_num_entries"] == 1
    assert got["tessera_response_cache_budget_bytes"] == budget
    assert 0 < got["tessera_response_cache_bytes"] == got["nv_cache_util"] * budget


def http_infer(base: str, path: str, body: dict[str, object]) -> int:
    """The HTTP status of an Open Inference Protocol infer request."""
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_refused_requests_are_failures_of_the_version_over_grpc_http_and_predict(start_daemon) -> None:
    """Every request for a loaded version that fails counts in ModelStatistics' fail and in
    nv_inference_request_failure, by reason; one for a model or version not loaded counts nowhere."""
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    channel = daemon.channel()
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "linear", linear_model(2.0))
    upload(channel, "one-row", reshape_model([1, 4]))  # a run of more than one row fails
    oip.ModelInfer(infer_request("linear", X, version="1"))
    oip.ModelInfer(infer_request("one-row", X[:1], version="1"))

    wrong_dtype = infer_request("linear", X.astype(np.float64), version="1")
    wrong_dtype.inputs[0].datatype = "FP64"
    unknown_input = infer_request("linear", X, version="1")
    unknown_input.inputs[0].name = "z"
    short_payload = infer_request("linear", X, version="1")
    short_payload.raw_input_contents[0] = X.tobytes()[:-4]
    short_for_version_2 = infer_request("linear", X, version="2")  # exists, not loaded
    short_for_version_2.raw_input_contents[0] = X.tobytes()[:-4]
    short_predict = predict_request("linear", X, version=1)
    short_predict.inputs[0].data = short_predict.inputs[0].data[:-4]
    refused = [
        (lambda r=r: oip.ModelInfer(r), grpc.StatusCode.INVALID_ARGUMENT)
        for r in (
            infer_request("linear", np.ones((2, 5), np.float32), version="1"),  # wrong shape
            wrong_dtype,
            unknown_input,
            pb.ModelInferRequest(model_name="linear", model_version="1"),  # no input
            short_payload,
            short_for_version_2,
        )
    ] + [
        (lambda: inference.Predict(predict_request("linear", np.ones((1, 5), np.float32), version=1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: inference.Predict(short_predict), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: oip.ModelInfer(infer_request("missing", X, version="1")), grpc.StatusCode.NOT_FOUND),
        (lambda: oip.ModelInfer(infer_request("one-row", X, version="1")), grpc.StatusCode.INVALID_ARGUMENT),
    ]  # fmt: skip
    for call, code in refused:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, err.value.details()
    base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}"
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}
    for body in (
        {"inputs": [{**x, "data": [0, 1, 2]}]},  # fewer values than its shape
        {"inputs": [{**x, "datatype": "INT32"}]},
        {"inputs": [{**x, "name": "z"}]},
        {"inputs": []},
    ):
        assert http_infer(base, "/v2/models/linear/versions/1/infer", body) == 400
    assert http_infer(base, "/v2/models/missing/infer", {"inputs": [x]}) == 404

    page = samples(scrape(daemon)[1])
    for model, reasons in (
        ("linear", {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 11}),
        ("one-row", {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}),
    ):
        (stats,) = oip.ModelStatistics(pb.ModelStatisticsRequest(name=model, version="1")).model_stats
        fail = stats.inference_stats.fail
        assert failures(page, model, "1") == reasons
        assert fail.count == sum(reasons.values()) and fail.ns > 0
        assert stats.inference_stats.success.count == 1
        (native,) = inference.GetStats(
            inference_pb2.GetStatsRequest(target=common_pb2.VersionRef(model=model, version=1))
        ).stats
        assert (native.request_count, native.error_count) == (1 + fail.count, fail.count)
    # Version 2 was never loaded: its refused request counted nowhere.
    assert not any('version="2"' in name or "missing" in name for name in page if name.startswith("nv_"))


def test_requests_dropped_from_the_queue_are_rejected_or_canceled(
    daemon, oip, inference, channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(channel, "slow", slow_model())
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="slow"),
            config=inference_pb2.ServingConfig(max_batch_size=64, instances=1),
        )
    )
    rows = np.ones((64, 384), np.float32)
    # A batch held on the one instance keeps the two requests below queued: one whose caller goes
    # away (CANCELED), one past its `timeout` (REJECTED, as by Triton's queue policy).
    held = HeldInstance(daemon, monkeypatch)
    try:
        blocker = oip.ModelInfer.future(infer_request("slow", rows, version="1"))
        assert held.inside.wait(30)
        cancelled = oip.ModelInfer.future(infer_request("slow", rows[:5], version="1"))
        request = infer_request("slow", rows[:3], version="1")
        request.parameters["timeout"].int64_param = 1
        timed_out = oip.ModelInfer.future(request)
        until(lambda: held.batcher.queued == 2, "both requests queued")
        cancelled.cancel()
        until(lambda: held.batcher.queued == 1, "the cancelled request off the queue")
    finally:
        held.release.set()
    assert timed_out.exception(60).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.result(60)
    oip.ModelInfer(infer_request("slow", rows[:1], version="1"))
    stats = settled_statistics(oip, "slow", "1")
    assert {b.batch_size for b in stats.batch_stats} == {64, 1}
    assert (stats.inference_stats.success.count, stats.inference_stats.fail.count) == (2, 2)
    page = samples(scrape(daemon)[1])
    assert failures(page, "slow", "1") == {"REJECTED": 1, "CANCELED": 1, "BACKEND": 0, "OTHER": 0}

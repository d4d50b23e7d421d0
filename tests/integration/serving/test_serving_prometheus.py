"""/metrics of a real daemon: Triton's nv_inference_* families, the store's gauges, process_*."""

from __future__ import annotations

import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_models import linear_model, predict_request, reshape_model, upload

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
    assert got == {
        "nv_inference_request_success": io.success.count,
        "nv_inference_request_failure": io.fail.count,
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
    after = samples(scrape(daemon)[1])
    assert after['nv_inference_request_success{model="linear",version="1"}'] == 5
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


def test_a_version_that_failed_to_load_has_no_series(daemon, channel, inference, linear) -> None:
    broken = upload(channel, "broken", reshape_model([3]))  # every run fails: it cannot warm up
    load = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="broken", version=broken))
    with pytest.raises(grpc.RpcError) as err:
        inference.LoadModel(load)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    inference.Predict(predict_request(linear, X, version=1))
    text = scrape(daemon)[1]
    # Listed as FAILED by ListLoaded, but not served: /metrics lists only what is, as Triton's does.
    assert 'model="linear"' in text
    assert 'model="broken"' not in text


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

"""/metrics of a real daemon: the store's gauges, process_*."""

from __future__ import annotations

import time
import urllib.request

from serving_models import linear_model, upload

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

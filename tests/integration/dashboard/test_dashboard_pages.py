"""The dashboard's pages in a real headless Chromium (Debian's package, driven by Playwright).

Each test also takes a screenshot of its page; `make screenshots` writes them to docs/screenshots/
(linked from the README).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.paging import MAX_PAGE_BYTES
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.conftest import SCREENSHOTS, small_spec, wait_until
from tests.integration.registry.conftest import mlp_weights, safetensors_header, upload
from tests.integration.sdk.affine import affine_onnx
from tests.integration.serving.serving_models import delete_model_numbered_as_before

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1000, "height": 700}
# Markup in a model's description, tag and a run's param: shown as text, never run.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
    reason="browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
    "`make test` installs it where it can)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    yield opened
    context.close()


def url(daemon: InProcessDaemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.daemon.http_port}{path}"


def open_page(page: Any, daemon: InProcessDaemon, path: str) -> None:
    page.goto(url(daemon, path))
    page.wait_for_selector("body[data-rendered]", timeout=60_000)


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def chart_points(page: Any, selector: str) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_job_page_curve_gains_points_while_the_job_runs(dash, client, table, page):
    job = client.training.submit(small_spec(table, epochs=400))
    try:
        wait_until(lambda: client.training.job(job.id).info.step >= 5, what="the job's first steps")
        open_page(page, dash, f"/jobs/{job.id}")
        first = chart_points(page, "#loss-chart")
        assert first >= 1
        page.wait_for_function(
            f"Number(document.querySelector('#loss-chart').dataset.points) > {first + 5}", timeout=60_000
        )
        assert page.text_content(".cards").startswith("state")
        screenshot(page, "job")
        open_page(page, dash, "/jobs")
        assert job.id in page.text_content("#active-jobs")
        screenshot(page, "jobs")
    finally:
        client.training.cancel(job.id)
    client.training.job(job.id).wait(check=False)
    open_page(page, dash, "/jobs")
    assert job.id in page.text_content("#finished-jobs")


def test_jobs_page_lists_finished_jobs_a_page_at_a_time(dash, client, table, finished_job, page):
    client.training.submit(small_spec(table, epochs=1)).wait()
    open_page(page, dash, "/jobs?finished=1")
    rows = "#finished-jobs tbody tr"
    assert page.locator(rows).count() == 1
    page.click("#older-jobs")
    page.wait_for_function(f"document.querySelectorAll('{rows}').length === 2", timeout=60_000)


def test_job_page_says_why_early_stopping_ended_the_job(dash, client, table, page):
    early = {"metric": "val_loss", "patience": 1, "min_delta": 100.0}
    job = client.training.submit(small_spec(table, epochs=50, early_stopping=early))
    job.wait()
    open_page(page, dash, f"/jobs/{job.id}")
    page.wait_for_selector("#stopped-early", timeout=60_000)
    assert page.text_content("#stopped-early") == (
        f"stopped early after epoch 2: val_loss did not improve on its best, {job.stopped_early.best:.6g} "
        "after epoch 1, by more than 100 for 1 epoch (early_stopping.patience)"
    )


def test_job_page_says_the_version_a_job_registered_and_its_alias(dash, client, table, page):
    register_as = {"model": "dash-registered", "alias": "staging"}
    job = client.training.submit(small_spec(table, epochs=1, register_as=register_as))
    job.wait()
    open_page(page, dash, f"/jobs/{job.id}")
    assert page.text_content("#registered") == "registered as dash-registered v1 (alias staging)"


def test_runs_page_sorts_by_a_metric_and_compares_runs(dash, client, page):
    for name, acc in (("mid", 0.5), ("top", 0.9), ("low", 0.1)):
        run = client.training.create_run(
            "dash-sort",
            name=name,
            params={"note": HOSTILE if name == "low" else name},
            create_experiment=True,
        )
        for step in range(1, 6):
            client.training.log_metrics(run.run_id, {"acc": acc * step / 5}, step)
    open_page(page, dash, "/runs?experiment=dash-sort")

    def names() -> list[str]:
        return page.eval_on_selector_all(
            "#runs-table tbody tr", "rows => rows.map(r => r.children[2].textContent)"
        )

    page.click("#runs-table th:text-is('acc')")
    descending = names()
    page.click("#runs-table th:text-is('acc')")
    assert names() == ["low", "mid", "top"] and descending == ["top", "mid", "low"]
    assert HOSTILE in page.text_content("#runs-table")
    boxes = page.query_selector_all("#runs-table input[type=checkbox]")
    boxes[0].check()
    boxes[1].check()
    page.click("text=Compare selected")
    page.wait_for_function(
        "document.querySelectorAll('.chart').length > 0 && Number(document.querySelector('.chart').dataset.points) >= 10"
    )
    screenshot(page, "runs")


def test_serving_page_shows_percentiles_that_move_under_load(dash, client, tmp_path, page):
    client.models.push("dash-live", affine_onnx(tmp_path / "affine.onnx"))
    x = {"input": np.ones((1, 4), np.float32)}
    for _ in range(10):
        client.inference.predict("dash-live", x)
    open_page(page, dash, "/serving")
    version = "[data-version='dash-live v1']"
    page.wait_for_selector(f"#loaded tr{version}")
    assert page.text_content(f"#loaded tr{version} td.requests") == "10"
    for part in ("queue", "compute", "total"):
        for percentile in ("p50", "p95", "p99"):
            cell = page.text_content(f"#latency tr{version}[data-part={part}] td.{percentile}")
            assert cell.endswith((" us", " ms")), (part, percentile, cell)
    for _ in range(30):
        client.inference.predict("dash-live", x)
    page.wait_for_function(
        f"document.querySelector(\"#loaded tr{version} td.requests\").textContent === '40'", timeout=30_000
    )
    page.wait_for_function("Number(document.querySelector('.chart').dataset.points) >= 4", timeout=30_000)
    screenshot(page, "serving")


def test_markup_in_names_renders_as_text(dash, client, tmp_path, page, table, finished_job):
    client.models.create("dash-markup", description=HOSTILE, tags={"note": HOSTILE})
    client.models.push(
        "dash-markup", affine_onnx(tmp_path / "affine.onnx"), description=HOSTILE, tags={"note": HOSTILE}
    )
    for path in ("/models", "/models/dash-markup"):
        open_page(page, dash, path)
        assert HOSTILE in page.text_content("#app")
        assert page.evaluate("window.__pwned") is None
        assert page.eval_on_selector_all("#app script, #app img", "nodes => nodes.length") == 0
    open_page(page, dash, "/models")
    screenshot(page, "models")
    trained = client.models.alias("tiny", "staging").version
    exported = client.models.export_onnx("tiny", trained).version.version
    open_page(page, dash, "/models/tiny")  # a trained version: its lineage links its job
    assert finished_job in page.text_content("#app")
    versions = [v.version for v in client.models.versions("tiny")]
    graph_nodes = page.eval_on_selector_all(
        "#lineage-graph [data-node]", "nodes => nodes.map(n => n.dataset.node)"
    )
    assert {f"version:tiny:{v}" for v in versions} <= set(graph_nodes)
    graph_edges = page.eval_on_selector_all(
        "#lineage-graph .lineage-edge", "paths => paths.map(p => [p.dataset.from, p.dataset.to])"
    )
    dataset_name, dataset_version = table.split(":")
    job_node = f"job:{finished_job}"
    assert [f"dataset:{dataset_name}:{dataset_version}", job_node] in graph_edges
    assert [job_node, f"version:tiny:{trained}"] in graph_edges
    assert [f"version:tiny:{trained}", f"version:tiny:{exported}"] in graph_edges  # the ONNX export's parent
    assert (
        page.eval_on_selector("#versions", "table => table.getBoundingClientRect().right")
        <= VIEWPORT["width"]
    )
    screenshot(page, "model")


def test_sweeps_and_system_pages(dash, client, table, page):
    sweep = client.training.submit_sweep(
        {
            "base": small_spec(table, epochs=1),
            "strategy": "SWEEP_STRATEGY_GRID",
            "parameters": [{"path": "optimizer.lr", "values": {"values": ["0.001", "0.05"]}}],
            "max_concurrent": 2,
            "metric": "val_loss",
        }
    )
    wait_until(lambda: client.training.sweep(sweep.id).best(), what="the sweep's best trial")
    open_page(page, dash, "/sweeps")
    assert sweep.id in page.text_content("table")
    screenshot(page, "sweeps")
    open_page(page, dash, f"/sweeps/{sweep.id}")
    assert "best so far" in page.text_content("table")
    open_page(page, dash, "/system")
    assert "CPU" in page.text_content(".cards")
    page.wait_for_function("Number(document.querySelector('.chart').dataset.points) >= 4", timeout=30_000)
    screenshot(page, "system")


def test_a_version_pushed_from_a_run_links_the_run_in_the_lineage_graph(dash, client, page, tmp_path):
    run = client.training.create_run("lg-pushed", create_experiment=True)
    client.models.push("lg-pushed", affine_onnx(tmp_path / "mlp1.onnx"), run_id=run.id)
    # Another tracker's run id is shown, not linked: this daemon has no page for it.
    weights = mlp_weights()
    lineage = registry_pb2.Lineage(run_id="mlflow-abc")
    upload(
        registry_pb2_grpc.RegistryStub(dash.channel()),
        safetensors_header("lg-pushed", weights, lineage=lineage),
        weights,
    )
    open_page(page, dash, "/models/lg-pushed")
    graph_nodes = page.eval_on_selector_all(
        "#lineage-graph [data-node]", "nodes => nodes.map(n => n.dataset.node)"
    )
    assert sorted(graph_nodes) == [
        "run:mlflow-abc",
        f"run:{run.id}",
        "version:lg-pushed:1",
        "version:lg-pushed:2",
    ]
    links = page.eval_on_selector_all("#lineage-graph a", "links => links.map(a => a.getAttribute('href'))")
    assert links == [f"/runs/{run.id}"]


def test_a_deleted_parent_is_its_own_node_in_the_lineage_graph(dash, page):
    """Not the version of a model created again under the parent's name, nor a link to it: deleted
    as a tesserad from before numbers went on across a delete did it, its v1 is another version."""
    stub = registry_pb2_grpc.RegistryStub(dash.channel())
    upload(stub, safetensors_header("lg-base", mlp_weights()), mlp_weights())
    child = mlp_weights(seed=1)
    lineage = registry_pb2.Lineage(parent_model="lg-base", parent_version=1)
    upload(stub, safetensors_header("lg-tuned", child, lineage=lineage), child)
    delete_model_numbered_as_before(dash, "lg-base")
    assert upload(stub, safetensors_header("lg-base", mlp_weights(seed=2)), mlp_weights(seed=2)).version == 1

    open_page(page, dash, "/models/lg-tuned")
    graph_nodes = page.eval_on_selector_all(
        "#lineage-graph [data-node]", "nodes => nodes.map(n => n.dataset.node)"
    )
    assert sorted(graph_nodes) == ["deleted:lg-base:1", "version:lg-tuned:1"]
    assert page.text_content('[data-node="deleted:lg-base:1"] title') == "lg-base v1 (deleted)"
    assert page.eval_on_selector_all("#lineage-graph a", "links => links.length") == 0


# An SVG artifact whose script would mark the page: shown in the run page, it must not run.
PWNING_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="60" height="20"><script>window.__pwned = 3</script>'
    b'<rect width="60" height="20" fill="#2f6fde"/></svg>'
)


def test_run_page_browses_previews_artifacts_and_the_deleted_view_restores(dash, client, tmp_path, page):
    run = client.training.create_run(
        "dash-art", name="with-files", params={"lr": "0.01"}, create_experiment=True
    )
    client.training.log_metrics(run.run_id, {"loss": 0.5}, 1)
    for path, content in (("notes.txt", b"fine\n" + HOSTILE.encode()), ("plots/loss.svg", PWNING_SVG)):
        local = tmp_path / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        client.training.log_artifact(run.run_id, local, path.rpartition("/")[0] or None)
    open_page(page, dash, f"/runs/{run.run_id}")
    assert page.text_content("#artifacts-table").count("plots/") == 1
    page.click("#artifacts-table a.preview")
    page.wait_for_selector("#artifact-preview pre")
    assert HOSTILE in page.text_content("#artifact-preview pre")
    page.click("#artifacts-table a.artifact-dir")
    page.wait_for_selector("#artifact-path a:text-is('plots')")
    page.click("#artifacts-table a.preview")
    page.wait_for_function("document.querySelector('#artifact-preview img')?.naturalWidth === 60")
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "run")
    page.goto(url(dash, f"/api/v1/runs/{run.run_id}/artifact?path=plots/loss.svg&preview=1"))
    assert page.evaluate("window.__pwned") is None  # opened on its own, the sandbox holds too

    client.training.delete_run(run.run_id)
    open_page(page, dash, f"/runs/{run.run_id}")
    page.click("#run-deleted a")  # to the experiment's deleted runs
    page.wait_for_selector("#runs-table")
    assert page.locator("#runs-table tbody tr").count() == 1
    page.click(f"button[aria-label='restore {run.run_id}']")
    page.wait_for_selector("text=No runs match.")
    open_page(page, dash, "/runs?experiment=dash-art")
    assert run.run_id in page.text_content("#runs-table")


def test_the_models_page_follows_pages_that_end_at_the_byte_bound(tmp_path, page):
    """A list page ends at MAX_PAGE_BYTES of records as well as at page_size: models with long
    descriptions fill a page before 500 of them, and the page asks on for the rest."""
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        description = "d" * 15_000
        count = MAX_PAGE_BYTES // len(description) + 20
        for i in range(count):
            stub.CreateModel(registry_pb2.CreateModelRequest(name=f"m{i:04d}", description=description))
        first = stub.ListModels(registry_pb2.ListModelsRequest(page_size=500))
        assert first.next_page_token and len(first.models) < count  # the bound this test is about
        open_page(page, daemon, "/models")
        assert page.locator("main tbody tr").count() == count
        assert not page.is_visible("p.more")
    finally:
        daemon.stop()


def test_unknown_job_shows_a_404_page(dash, page):
    response = page.goto(url(dash, "/jobs/no-such-job"))
    assert response.status == 404
    assert "job 'no-such-job' does not exist" in page.text_content("main")


def test_a_reader_token_logs_in_and_no_token_is_refused_off_loopback(tmp_path, browser):
    reader = new_token()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        format_entry("reader-holder", Role.READER, hash_token(reader))
        + format_entry("admin-holder", Role.ADMIN, hash_token(new_token()))
    )
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", http_listen="0.0.0.0:0", **{"security.tokens_file": str(tokens)})
    ).start()
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        refused = page.goto(url(daemon, "/runs?experiment=x"))
        assert refused.status == 401 and page.is_visible("input[name=token]")
        page.fill("input[name=token]", new_token())
        page.click("button[type=submit]")
        assert "not valid" in page.text_content("main")
        page.fill("input[name=token]", reader)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-rendered]")
        assert page.url.endswith("/runs?experiment=x")  # back to the page that asked
        assert page.text_content("h1") == "Runs"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts never see the token
        page.click("#logout")
        page.wait_for_url("**/login")
        assert page.is_visible("input[name=token]")
        again = page.goto(url(daemon, "/runs"))
        assert again.status == 401 and page.is_visible("input[name=token]")
    finally:
        context.close()
        daemon.stop()

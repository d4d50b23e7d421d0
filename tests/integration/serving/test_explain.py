"""Inference.Explain: captum attributions of torch versions, through the SDK and the raw API.

The one-voxel model's output 1 is 2 * relu(x[VOXEL]) and depends on nothing else, so every method
must put its largest attribution there. Integrated gradients' completeness is checked on a
nonlinear cnn4d against the daemon's own Predict outputs.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from serving_models import (
    cnn4d_weights,
    linear_model,
    upload,
    upload_weights,
)

import tessera
from tessera.v1 import architecture_pb2, common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2
from tests.integration.serving.voxel_model import SHAPE, VOXEL, clips, push_one_voxel

METHODS = ("integrated_gradients", "saliency", "occlusion", "gradient_shap")
# Integrated gradients (captum's Gauss-Legendre path) with IG_STEPS steps on the tanh cnn4d:
# |sum of attributions - (F(x) - F(0))| is at most this fraction of |F(x) - F(0)| plus 1e-5
# (measured: 4 steps leave 5e-4..1e-3 of it, 8 or more below 1e-6).
IG_STEPS = 16
IG_COMPLETENESS_TOLERANCE = 1e-3


def push_tanh_cnn4d(client: tessera.Client, tmp_path: Path) -> None:
    """A seeded cnn4d with tanh and conv biases: unlike relu without biases, its output is not
    linear along the path from 0, so integrated gradients have something to integrate."""
    import torch
    from safetensors.torch import save_file

    from tesserad.nn import build_model, spec_from_dict

    family = {"channels": [4], "kernel_size": 3, "norm": "none", "activation": "tanh"}
    torch.manual_seed(0)
    model = build_model(
        spec_from_dict({"family": "cnn4d", "input_shape": list(SHAPE), "output_size": 2, **family})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tanh.safetensors"))
    client.models.push(
        "tanh",
        tmp_path / "tanh.safetensors",
        architecture=architecture_pb2.Architecture(
            input_shape=SHAPE, output_size=2, cnn4d=architecture_pb2.Cnn4dSpec(**family)
        ),
        signature=common_pb2.Signature(
            inputs=[
                common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, *SHAPE])
            ],
            outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
        ),
    )


@pytest.fixture
def client(daemon):
    with tessera.Client(daemon.target, timeout=120) as sdk:
        yield sdk


@pytest.mark.parametrize("method", METHODS)
def test_the_top_attribution_is_the_voxel_the_answer_depends_on(client, tmp_path, method):
    version = push_one_voxel(client, tmp_path)
    x = clips(2)
    explanation = client.inference.explain("voxel", x, method, target=1)
    attribution = explanation["input"]
    assert attribution.shape == x.shape and attribution.dtype == np.float32
    assert (explanation.version, explanation.explained_version) == (version, version)
    assert explanation.output_indices == [1, 1]
    for row in range(2):
        (top, value), (_, second) = tessera.top_positions(attribution[row], 2)
        assert top == VOXEL, (method, row, top)
        assert abs(value) > 0 and abs(second) < 1e-3 * abs(value)
    # Integrated gradients and occlusion are exact for this model: 2 * x[VOXEL].
    if method in ("integrated_gradients", "occlusion"):
        np.testing.assert_allclose(
            attribution[(slice(None), *VOXEL)], 2 * x[(slice(None), *VOXEL)], rtol=1e-4
        )


def test_a_torch_tensor_is_sent_as_its_own_dtype_with_the_torch_cast_said(client, tmp_path):
    """Here, not beside the other dtype tests, since this worker imports torch anyway. A float64
    tensor was refused with numpy's cast (x.astype), and a bfloat16 one with torch's TypeError."""
    import torch

    push_one_voxel(client, tmp_path)
    x = torch.from_numpy(clips(2))
    with pytest.raises(tessera.InvalidArgument, match=r"input 'input' as x\.to\(torch\.float32\)$"):
        client.inference.predict("voxel", x.double())
    expected = client.inference.predict("voxel", x.numpy())["output"]
    np.testing.assert_array_equal(client.inference.predict("voxel", x.requires_grad_())["output"], expected)
    # x.conj().imag of a complex x is a negated view: numpy() refused it.
    negated = torch.complex(torch.zeros_like(x), -x).conj().imag
    np.testing.assert_array_equal(client.inference.predict("voxel", negated)["output"], expected)
    assert client.inference.explain("voxel", negated, "saliency", target=1)["input"].shape == x.shape
    with pytest.raises(
        ValueError, match=r"^input 'input': a torch bfloat16 tensor .*x\.to\(torch\.float32\)"
    ):
        client.inference.predict("voxel", x.bfloat16())


def test_without_a_target_each_row_explains_its_predicted_output(client, tmp_path):
    push_one_voxel(client, tmp_path)
    x = clips(2)
    x[1] = -x[1]  # the relu gives 0: both outputs 0, argmax picks output 0
    explanation = client.inference.explain("voxel", x, "saliency")
    assert explanation.output_indices == [1, 0]
    assert not explanation["input"][1].any()


def test_integrated_gradients_are_complete_on_a_nonlinear_cnn4d(client, tmp_path):
    push_tanh_cnn4d(client, tmp_path)
    x = (3 * np.random.default_rng(1).standard_normal((3, *SHAPE))).astype(np.float32)
    at_input = client.inference.predict("tanh", x)["output"][:, 1]
    at_baseline = client.inference.predict("tanh", np.zeros_like(x))["output"][:, 1]
    difference = at_input - at_baseline
    assert np.all(np.abs(difference) > 0.1)  # a path with something to attribute
    errors = {}
    for steps in (2, IG_STEPS):
        explanation = client.inference.explain("tanh", x, "ig", target=1, steps=steps)
        totals = explanation["input"].reshape(3, -1).sum(axis=1)
        errors[steps] = np.abs(totals - difference)
        # The daemon's own completeness figure agrees with the one measured here.
        np.testing.assert_allclose(explanation.convergence_delta, totals - difference, atol=1e-5)
    assert np.all(errors[IG_STEPS] <= IG_COMPLETENESS_TOLERANCE * np.abs(difference) + 1e-5), errors
    assert errors[2].max() > errors[IG_STEPS].max()  # the check sees a path with too few steps


def test_an_onnx_export_is_explained_through_its_torch_parent(client, channel):
    torch_version = upload_weights(channel, "clips", cnn4d_weights())
    exported = client.models.export_onnx("clips", torch_version).version.version
    x = np.random.default_rng(2).standard_normal((1, *SHAPE)).astype(np.float32)
    through_onnx = client.inference.explain("clips", x, "saliency", version=exported, target=0)
    direct = client.inference.explain("clips", x, "saliency", version=torch_version, target=0)
    assert (through_onnx.version, through_onnx.explained_version) == (exported, torch_version)
    np.testing.assert_array_equal(through_onnx["input"], direct["input"])


def test_an_onnx_version_without_a_torch_parent_is_refused(client, channel):
    upload(channel, "linear", linear_model(1.0))
    with pytest.raises(tessera.FailedPrecondition) as raised:
        client.inference.explain("linear", np.ones((1, 4), np.float32), "saliency")
    assert "ONNX" in raised.value.message and "names no torch version" in raised.value.message


def test_an_onnx_version_whose_torch_parent_was_deleted_is_refused_not_explained_by_a_new_one(
    client, channel
):
    """A model deleted and created again numbers from 1: the ONNX version's lineage still names
    the deleted version 1, which must not be taken for the new, unrelated one."""
    upload_weights(channel, "base", cnn4d_weights())
    child = upload(
        channel,
        "served",
        linear_model(1.0),
        lineage=registry_pb2.Lineage(parent_model="base", parent_version=1),
    )
    client.models.delete("base", force=True)
    upload_weights(channel, "base", cnn4d_weights())
    with pytest.raises(tessera.FailedPrecondition) as raised:
        client.inference.explain("served", np.ones((1, 4), np.float32), "saliency", version=child)
    assert "exported from model 'base' version 1, which no longer exists" in raised.value.message


@pytest.fixture
def explain_stub(channel, client, tmp_path) -> inference_pb2_grpc.InferenceStub:
    push_one_voxel(client, tmp_path)
    return inference_pb2_grpc.InferenceStub(channel)


def request(x: np.ndarray, **fields: object) -> inference_pb2.ExplainRequest:
    values = {"method": inference_pb2.EXPLAIN_METHOD_SALIENCY, **fields}
    return inference_pb2.ExplainRequest(
        target=common_pb2.VersionRef(model="voxel"), inputs=[tessera.tensors.to_tensor("input", x)], **values
    )


@pytest.mark.parametrize(
    ("fields", "x", "text"),
    [
        ({"method": 0}, clips(1), "method must be one of EXPLAIN_METHOD_INTEGRATED_GRADIENTS"),
        ({"method": 42}, clips(1), "got 42"),
        ({"output_index": 2}, clips(1), "output_index must be in 0..1"),
        ({"output_index": -1}, clips(1), "got -1"),
        ({}, clips(1)[:, :, :2], "input 'input' has size 2 in dimension 2"),
        ({}, clips(1).astype(np.float64), "input 'input' has dtype float64"),
        ({}, clips(1)[0], "rank 5"),
        ({"options": inference_pb2.ExplainOptions(window=[1, 1])}, clips(1), "options.window must give"),
        ({"options": inference_pb2.ExplainOptions(stride=[1, 1, 9, 1, 1])}, clips(1), "options.stride"),
        ({"options": inference_pb2.ExplainOptions(steps=5000)}, clips(1), "options.steps must be in 1..1024"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_what_to_fix(
    explain_stub, expect_rpc_error, fields, x, text
):
    expect_rpc_error(
        lambda: explain_stub.Explain(request(x, **fields)), grpc.StatusCode.INVALID_ARGUMENT, text
    )


def test_an_unknown_model_is_not_found(explain_stub, expect_rpc_error):
    bad = request(clips(1))
    bad.target.model = "nope"
    expect_rpc_error(lambda: explain_stub.Explain(bad), grpc.StatusCode.NOT_FOUND, "nope")


def test_the_sdk_names_the_methods_it_knows(client):
    with pytest.raises(ValueError, match="integrated_gradients, saliency, occlusion, gradient_shap"):
        client.inference.explain("voxel", clips(1), "lime")


def test_explanations_are_capped_and_a_full_queue_is_refused_while_predict_is_served(
    start_daemon, tmp_path, monkeypatch
):
    """One explain thread, one waiting place: of six explanations sent at once while the one
    running is held, at least four are refused with advice, no two ever run at once, and Predict
    is answered meanwhile."""
    served = start_daemon(
        **{
            "serving.explain_threads": 1,
            "serving.explain_queue_size": 1,
            "serving.explain_chunk_rows": 1,
        }
    )
    # Held rather than slow: a slow one yields to each Predict queued, minutes on a loaded machine.
    explainer = served.daemon.inference.explainer
    explain_now = explainer._explain
    release = threading.Event()

    def held(*args):
        assert release.wait(120)
        return explain_now(*args)

    monkeypatch.setattr(explainer, "_explain", held)
    with tessera.Client(served.target, timeout=120) as sdk:
        push_one_voxel(sdk, tmp_path)
        sdk.inference.predict("voxel", clips(1))  # loaded before the load starts
        x = clips(2)
        stop = threading.Event()
        predicted: list[int] = []
        refused = threading.Semaphore(0)

        def predict_meanwhile() -> None:
            while not stop.is_set():
                predicted.append(int(sdk.inference.predict("voxel", x[:1])["output"].shape[0]))

        def explain() -> str:
            try:
                sdk.inference.explain("voxel", x, "ig", target=1, steps=16)
            except tessera.ResourceExhausted as exc:
                refused.release()
                return exc.message
            return "done"

        predictor = threading.Thread(target=predict_meanwhile)
        predictor.start()
        try:
            with ThreadPoolExecutor(6) as senders:
                sent = [senders.submit(explain) for _ in range(6)]
                try:
                    # At most one running (held) and one waiting: the other four are refused.
                    for _ in range(4):
                        assert refused.acquire(timeout=60), [o.result() for o in sent if o.done()]
                    assert predicted
                finally:
                    release.set()
                outcomes = [o.result() for o in sent]
        finally:
            stop.set()
            predictor.join()
    refusals = [o for o in outcomes if o != "done"]
    assert len(refusals) >= 4 and outcomes.count("done") >= 1, outcomes
    assert all("serving.explain_queue_size" in refusal and "retry" in refusal for refusal in refusals)
    assert explainer.peak_running == 1
    assert predicted and set(predicted) == {1}


def test_an_explanation_whose_caller_went_away_leaves_the_queue(start_daemon, tmp_path):
    """Two slow explanations whose deadlines pass (one running, one queued) give their places
    back: the next one is accepted and answered, and nothing is left counted as waiting."""
    served = start_daemon(
        **{
            "serving.explain_threads": 1,
            "serving.explain_queue_size": 2,
            "serving.explain_chunk_rows": 1,
        }
    )
    with tessera.Client(served.target, timeout=120) as sdk:
        push_one_voxel(sdk, tmp_path)
        slow = clips(64)

        def explain_slowly() -> type[Exception] | None:
            try:
                sdk.inference.explain("voxel", slow, "ig", target=1, steps=1024, timeout=0.5)
            except tessera.TesseraError as exc:
                return type(exc)
            return None

        with ThreadPoolExecutor(2) as senders:
            outcomes = list(senders.map(lambda _: explain_slowly(), range(2)))
        assert outcomes == [tessera.DeadlineExceeded, tessera.DeadlineExceeded]
        answered = sdk.inference.explain("voxel", clips(1), "saliency", target=1)
    assert tessera.top_positions(answered["input"][0], 1)[0][0] == VOXEL
    explainer = served.daemon.inference.explainer
    assert (explainer.waiting, explainer.running) == (0, 0)

"""predict's inputs as a notebook writes them: a plain list is sent as numpy makes it (float64),
and where the version that serves it refuses that dtype (named by number, or by the daemon when
an alias or the deployment chose it), sent again once as the dtype its signature gives the input;
an array of another dtype is refused with the cast to make for that version."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import numpy as np
import pytest
from onnx import TensorProto

import tessera
import tessera.aio
from tessera.v1 import common_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

ROWS = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


@pytest.fixture
def served(client, make_onnx):
    client.models.push("affine", make_onnx("v1", scale=2.0, bias=1.0))
    client.models.push("affine", make_onnx("v2", scale=3.0, bias=0.0), set_alias="production")
    client.inference.load("affine", 1)
    client.inference.load("affine", "production")
    return "affine"


def test_a_list_is_sent_again_as_the_dtype_of_the_numbered_version_s_input(client, served):
    expected = np.array(ROWS, np.float32)
    np.testing.assert_allclose(
        client.inference.predict("affine", ROWS, version=1)["output"], expected * 2 + 1
    )
    again = client.inference.predict("affine", {"input": ROWS}, version=1)
    np.testing.assert_allclose(again["output"], expected * 2 + 1)


def test_a_list_refused_by_the_version_an_alias_or_the_deployment_chose_is_sent_again_as_its_dtype(
    client, served
):
    # The daemon names the version that refused (version 2, which latest and production name).
    for selector in ({"alias": "production"}, {}):
        prediction = client.inference.predict("affine", ROWS, **selector)
        assert prediction.version == 2
        np.testing.assert_allclose(prediction["output"], np.array(ROWS, np.float32) * 3)


def test_once_a_target_s_version_refused_a_list_later_lists_go_as_its_dtype_at_once(client, served):
    def refused() -> int:
        (stats,) = client.inference.stats("affine", 2)
        return stats.error_count

    before = refused()
    for _ in range(3):
        prediction = client.inference.predict("affine", ROWS, alias="production")
        np.testing.assert_allclose(prediction["output"], np.array(ROWS, np.float32) * 3)
    # The first call's float64 request alone was refused: the later ones went as float32.
    assert refused() == before + 1


def test_a_refusal_by_another_version_than_the_lists_were_cast_for_casts_them_for_that_one(client, make_onnx):
    client.models.push("moved", make_onnx("f32", scale=3.0, bias=0.0))
    client.models.push("moved", make_onnx("f64", scale=2.0, bias=1.0, elem_type=TensorProto.DOUBLE))
    client.inference.load("moved", 1)
    client.inference.load("moved", 2)
    client.models.deploy("moved", {1: 100})
    assert client.inference.predict("moved", ROWS)["output"].dtype == np.float32
    # Now cast for version 1 up front; version 2 refuses float32, and the lists go as float64.
    client.models.deploy("moved", {2: 100})
    for _ in range(2):
        prediction = client.inference.predict("moved", ROWS)
        assert prediction.version == 2
        np.testing.assert_allclose(prediction["output"], np.array(ROWS) * 2 + 1)


def test_inputs_go_as_the_version_the_deployment_routes_to_takes_them(client, make_onnx):
    client.models.push("mixed", make_onnx("f64", scale=2.0, bias=1.0, elem_type=TensorProto.DOUBLE))
    client.models.push("mixed", make_onnx("f32", scale=3.0, bias=0.0))
    client.inference.load("mixed", 1)
    client.models.deploy("mixed", {1: 100})
    prediction = client.inference.predict("mixed", ROWS)
    assert prediction.version == 1
    np.testing.assert_allclose(prediction["output"], np.array(ROWS) * 2 + 1)
    # The cast is the routed version's (float64), not latest's (float32).
    with pytest.raises(
        tessera.InvalidArgument, match=r"version 1 expects float64; .*\.astype\(np\.float64\)"
    ):
        client.inference.predict("mixed", np.array(ROWS, np.float32))


def test_nan_and_inf_in_a_list_are_sent_as_the_float_dtype_of_the_input(client, served):
    rows = [[np.nan, np.inf, -np.inf, 1.0]]
    output = client.inference.predict("affine", rows, version=1)["output"]
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, np.array([[np.nan, np.inf, -np.inf, 3.0]], np.float32))
    with pytest.raises(
        tessera.InvalidArgument, match=r"version 1 expects float32; input 'input'.*cannot hold"
    ):
        client.inference.predict("affine", [[1e300, 0.0, 0.0, 0.0]], version=1)


def test_a_list_the_input_s_dtype_cannot_hold_is_refused_before_a_call(client, served):
    with pytest.raises(ValueError, match=r"input 'input'.*float32"):
        client.inference.predict("affine", [["a", "b", "c", "d"]], version=1)


def test_an_array_of_another_dtype_is_refused_with_the_cast_to_make(client, served):
    with pytest.raises(tessera.InvalidArgument, match=r"float64.*\.astype\(np\.float32\)"):
        client.inference.predict("affine", np.array(ROWS), version=1)


def test_a_frame_is_sent_as_its_own_dtype_and_refused_with_the_frame_s_cast(client, served):
    """A float64 DataFrame was cast to float32 unseen, and sent twice: the first request, refused,
    counted in the version's errors; the cast said was numpy's. (A torch tensor's case is in
    tests/integration/serving/test_explain.py, whose worker imports torch anyway.)"""
    import pandas as pd

    def refused() -> int:
        (stats,) = client.inference.stats("affine", 1)
        return stats.error_count

    before = refused()
    with pytest.raises(
        tessera.InvalidArgument, match=r"float64.*input 'input' as df\.astype\(\"float32\"\)$"
    ):
        client.inference.predict("affine", pd.DataFrame(ROWS), version=1)
    assert refused() == before + 1  # sent once
    expected = np.array(ROWS, np.float32) * 2 + 1
    # pandas' nullable Float32 with no <NA> is its numbers' float32.
    for given in (pd.DataFrame(ROWS, dtype=np.float32), pd.DataFrame(ROWS, dtype="Float32")):
        np.testing.assert_allclose(client.inference.predict("affine", given, version=1)["output"], expected)


def test_a_frame_no_array_holds_as_it_is_is_refused_naming_the_column(client, served):
    import pandas as pd

    ints = pd.DataFrame(ROWS, columns=list("abcd")).astype("int64")
    missing = ints.astype("Int64")
    missing.loc[1, "c"] = pd.NA  # was sent as float64 NaN, unseen
    cases = {
        # was an object array, refused in words that named no column
        r"the frame's columns have different dtypes \('a' int64, 'b' bool, 'c' int64, 'd' int64\)": ints.astype(
            {"b": bool}
        ),
        r"column 'c' \(Int64\) has missing values \(<NA>\)": missing,
        r"column 'd' is category": ints.astype({"d": "category"}),
        r"column 'a' is datetime64": ints.assign(a=pd.to_datetime(ints["a"], unit="s")),
        r"column 'b' is (str|object)": ints.assign(b=["x", "y"]),
    }
    for words, frame in cases.items():
        with pytest.raises(ValueError, match=f"^input 'x': {words}"):
            client.inference.predict("affine", {"x": frame}, version=1)
    with pytest.raises(ValueError, match=r"^input 'input': the Series 'c' \(Int64\) has missing values"):
        client.inference.predict("affine", missing["c"], version=1)


class _FrameLike:
    """A frame that is not pandas' (a polars DataFrame, say): its values come from to_numpy()."""

    def __init__(self, rows: list[list[float]], dtype: type) -> None:
        self._values = np.array(rows, dtype)
        self.columns = [f"c{i}" for i in range(self._values.shape[1])]
        self.dtypes = [self._values.dtype] * len(self.columns)

    def to_numpy(self) -> np.ndarray:
        return self._values


def test_a_frame_other_than_pandas_is_sent_as_its_to_numpy_array_is(client, served):
    # It was read as pandas' (.iloc): an AttributeError.
    with pytest.raises(
        tessera.InvalidArgument, match=r"float64.*input 'input' as x\.to_numpy\(\)\.astype\(np\.float32\)$"
    ):
        client.inference.predict("affine", _FrameLike(ROWS, np.float64), version=1)
    prediction = client.inference.predict("affine", {"input": _FrameLike(ROWS, np.float32)}, version=1)
    np.testing.assert_allclose(prediction["output"], np.array(ROWS, np.float32) * 2 + 1)


def test_the_asyncio_client_sends_a_list_as_the_input_s_dtype(daemon, served):
    async def scenario() -> np.ndarray:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(tessera.InvalidArgument, match=r"\.astype\(np\.float32\)"):
                await client.inference.predict("affine", np.array(ROWS), version=1)
            return (await client.inference.predict("affine", ROWS, version=2))["output"]

    np.testing.assert_allclose(asyncio.run(scenario()), np.array(ROWS, np.float32) * 3)


class _OlderInference(inference_pb2_grpc.InferenceServicer):
    """Refuses every Predict as a tesserad from before the refusing-version trailer: in words."""

    def __init__(self) -> None:
        self.predicts = 0

    def Predict(self, request, context):
        self.predicts += 1
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'input' has dtype float64; model 'affine' version 2 expects float32",
        )


class _Registry(registry_pb2_grpc.RegistryServicer):
    def GetVersion(self, request, context):
        spec = common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])
        return registry_pb2.ModelVersion(
            model="affine", version=2, signature=common_pb2.Signature(inputs=[spec])
        )


def test_with_a_daemon_that_names_no_refusing_version_a_list_is_cast_only_for_a_numbered_version():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference = _OlderInference()
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    registry_pb2_grpc.add_RegistryServicer_to_server(_Registry(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with tessera.Client(f"127.0.0.1:{port}", timeout=10) as client:
            with pytest.raises(tessera.InvalidArgument, match=r"version 2 expects float32$"):
                client.inference.predict("affine", ROWS, alias="production")
            assert inference.predicts == 1  # refused as it came, not sent again
            with pytest.raises(tessera.InvalidArgument, match=r"expects float32$"):
                client.inference.predict("affine", ROWS, version=2)
            assert inference.predicts == 3  # sent again once as float32
            with pytest.raises(tessera.InvalidArgument, match=r"expects float32$"):
                client.inference.predict("affine", ROWS, version=2)
            assert inference.predicts == 4  # as float32 at once, and not again when refused
            with pytest.raises(tessera.InvalidArgument, match=r"\.astype\(np\.float32\)"):
                client.inference.predict("affine", np.array(ROWS), alias="production")
    finally:
        server.stop(0).wait(5)

"""What help() and IDEs show of a client's methods: the result a call gives (a Prediction, not
the description of the call that makes it), an iterator's items, and a listing's."""

from __future__ import annotations

import asyncio
import inspect

import tessera
import tessera.aio
from tessera.calls import Call, Stream
from tessera.transport import AioConnection, Connection
from tessera.v1 import registry_pb2, training_pb2
from tests.unit.sdk.test_sdk_twins import PARTS, public_methods


def test_a_bound_method_shows_the_result_it_gives_on_each_client():
    async def scenario() -> None:
        async with tessera.aio.Client("127.0.0.1:1") as aio_client:
            with tessera.Client("127.0.0.1:1") as client:
                predict = inspect.signature(client.inference.predict)
                assert predict.return_annotation is tessera.Prediction
                assert predict.parameters["inputs"].annotation == "Inputs"  # not the union it stands for
                assert "-> tessera.inference.Prediction" in str(predict)
                aio_predict = inspect.signature(aio_client.inference.predict)
                assert inspect.iscoroutinefunction(aio_client.inference.predict)
                assert aio_predict.return_annotation is tessera.Prediction
                assert (
                    inspect.signature(client.models.versions).return_annotation
                    == tessera.Listing[registry_pb2.ModelVersion]
                )
                assert (
                    inspect.signature(aio_client.models.versions).return_annotation
                    == tessera.AioListing[registry_pb2.ModelVersion]
                )
                assert inspect.signature(client.training.submit).return_annotation == tessera.Job[Connection]
                assert (
                    inspect.signature(aio_client.training.submit).return_annotation
                    == tessera.Job[AioConnection]
                )
                job = tessera.Job(client.training._conn, training_pb2.Job(job_id="j"))
                assert inspect.signature(job.wait).return_annotation == tessera.Job[Connection]
                assert (
                    inspect.signature(client.models.download).return_annotation is registry_pb2.ModelVersion
                )
                assert inspect.signature(client.training.log_metrics_stream).return_annotation is int
                for made in (client, aio_client):
                    for part in PARTS:
                        for name, method in public_methods(getattr(made, part)).items():
                            shown = inspect.signature(method).return_annotation
                            assert shown is not inspect.Signature.empty and not isinstance(shown, str), name
                            assert not (isinstance(shown, type) and issubclass(shown, Call | Stream)), name
                assert client.inference.predict.__doc__ == tessera.inference.Inference.predict.__doc__

    asyncio.run(scenario())

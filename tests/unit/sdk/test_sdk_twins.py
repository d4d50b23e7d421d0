"""The blocking and asyncio clients are one set of methods: the same names, signatures and
docs, returning results on one and coroutines (or async iterators) on the other."""

from __future__ import annotations

import asyncio
import inspect

import tessera
import tessera.aio
import tessera.models
from tessera.calls import _CallMethod, _ListingMethod, _StreamMethod
from tessera.v1 import training_pb2

PARTS = ("models", "datasets", "training", "inference", "system")


def public_methods(part: object) -> dict[str, object]:
    return {
        name: getattr(part, name)
        for name, value in vars(type(part)).items()
        if isinstance(value, _CallMethod | _ListingMethod | _StreamMethod)
    }


def test_every_method_has_the_same_signature_and_doc_on_both_clients():
    async def scenario() -> None:
        async with tessera.aio.Client("127.0.0.1:1") as aio_client:
            with tessera.Client("127.0.0.1:1") as client:
                for part in PARTS:
                    blocking = public_methods(getattr(client, part))
                    asyncio_ = public_methods(getattr(aio_client, part))
                    assert blocking and blocking.keys() == asyncio_.keys(), part
                    for name, method in blocking.items():
                        twin = asyncio_[name]
                        # The results differ (Iterator and AsyncIterator): test_sdk_signatures.
                        assert inspect.signature(method).parameters == inspect.signature(twin).parameters, (
                            name
                        )
                        assert method.__doc__ and method.__doc__ == twin.__doc__, name
                        descriptor = vars(type(getattr(client, part)))[name]
                        assert inspect.iscoroutinefunction(twin) == isinstance(descriptor, _CallMethod), name
                        assert not inspect.iscoroutinefunction(method), name
                assert "self" not in inspect.signature(client.models.create).parameters
                handles = (
                    (tessera.Job, training_pb2.Job(job_id="j")),
                    (tessera.Sweep, training_pb2.Sweep(sweep_id="s")),
                )
                for handle, info in handles:
                    blocking, asyncio_ = (handle(made.training._conn, info) for made in (client, aio_client))
                    assert public_methods(blocking).keys() == public_methods(asyncio_).keys()
                    for name, method in public_methods(blocking).items():
                        twin = public_methods(asyncio_)[name]
                        assert inspect.signature(method).parameters == inspect.signature(twin).parameters, (
                            name
                        )

    asyncio.run(scenario())


def test_both_clients_take_the_same_arguments_and_close_alike():
    assert inspect.signature(tessera.Client) == inspect.signature(tessera.aio.Client)
    assert inspect.iscoroutinefunction(tessera.aio.Client.close)
    assert not inspect.iscoroutinefunction(tessera.Client.close)


def test_the_asyncio_names_are_the_shared_classes():
    assert tessera.aio.Models is tessera.models.Models and tessera.aio.Job is tessera.Job
    assert tessera.aio.Sweep is tessera.Sweep
    assert set(tessera.aio.__all__) == {
        "Client",
        "Datasets",
        "Inference",
        "Job",
        "Models",
        "Sweep",
        "System",
        "Training",
    }


def test_a_method_is_bound_once_per_part():
    with tessera.Client("127.0.0.1:1") as client, tessera.Client("127.0.0.1:1") as other:
        assert client.inference.predict is client.inference.predict
        assert client.models.get is not other.models.get

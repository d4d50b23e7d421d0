"""A page token carries its resume key in the open, beside a fingerprint of its query that
anyone can compute; one whose key does not decode is INVALID_ARGUMENT like any token the server
did not issue (it was INTERNAL, from the key decoder)."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import rpc_error

R = registry_pb2


def with_key(token: str, key_hex: str) -> str:
    fields = json.loads(base64.urlsafe_b64decode(token))
    return base64.urlsafe_b64encode(json.dumps({"a": key_hex, "q": fields["q"]}).encode()).decode()


# An unknown tag, a cut integer, a string without its end, a cut escape, a string not UTF-8.
@pytest.mark.parametrize("key_hex", ["ff" * 5, "0200", "036d", "036d00", "03ff0000"])
def test_a_token_whose_key_does_not_decode_is_invalid_argument(stub, key_hex):
    for name in ("a", "b", "c"):
        stub.CreateModel(R.CreateModelRequest(name=name))
    token = stub.ListModels(R.ListModelsRequest(page_size=1)).next_page_token
    assert token
    error = rpc_error(stub.ListModels, R.ListModelsRequest(page_size=1, page_token=with_key(token, key_hex)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "page_token is not one this server issued; pass next_page_token unchanged"


def test_a_token_of_json_nested_past_the_parser_is_invalid_argument(stub):
    # Python's parser raises RecursionError on it, which reached the client as INTERNAL.
    deep = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    error = rpc_error(stub.ListModels, R.ListModelsRequest(page_size=1, page_token=deep))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "page_token is not one this server issued; pass next_page_token unchanged"

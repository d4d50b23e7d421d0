"""The HTTP inference listener's header logic (tesserad.api.oip_http_headers): which coding an
answer goes in, whether it is worth compressing, and the CORS headers of an answer."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from tesserad.api.oip_http_headers import (
    MAX_COMPRESSED_SIZE,
    SAMPLE_SIZE,
    CorsRule,
    compressed,
    response_coding,
)


@pytest.mark.parametrize(
    ("accepted", "coding"),
    [
        ("gzip", "gzip"),
        ("deflate;q=0.5, gzip;q=0", "deflate"),
        ("gzip;q=0.2, deflate;q=0.200", "gzip"),  # the first of equals
        # q is read wherever it is among the parameters.
        ("gzip;foo=1;q=0", "identity"),
        ("gzip;foo=1;q=0, deflate;level=9 ; Q=0.5", "deflate"),
        # A q outside 0..1, or not a qvalue (RFC 9110: at most 3 decimals), makes its coding not
        # acceptable: never chosen over one said properly.
        ("gzip;q=inf, deflate;q=0.1", "deflate"),
        ("gzip;q=1.5, deflate;q=0.1", "deflate"),
        ("gzip;q=-1", "identity"),
        ("gzip;q=nan", "identity"),
        ("gzip;q=0.0001", "identity"),
        ("gzip;q=1.000", "gzip"),
        ("gzip;q=", "identity"),
        ("gzip;q=0.5;q=1", "identity"),
        ("br, *", "identity"),
        (None, "identity"),
    ],
)
def test_response_coding_reads_each_coding_s_q_as_rfc_9110_writes_it(
    accepted: str | None, coding: str
) -> None:
    assert response_coding(accepted) == coding


def test_an_answer_is_compressed_only_when_clearly_smaller_and_not_too_large() -> None:
    text = b'{"outputs": [' + b"1.5, " * 50_000 + b"2]}"
    assert gzip.decompress(compressed(text, "gzip") or b"") == text
    assert zlib.decompress(compressed(text, "deflate") or b"") == text
    # Random bytes hardly shrink: small ones are tried whole, large ones by their first bytes
    # (compressible data after them is never reached).
    assert compressed(os.urandom(4096), "gzip") is None
    assert compressed(os.urandom(SAMPLE_SIZE) + bytes(2 * SAMPLE_SIZE), "gzip") is None
    assert compressed(bytes(MAX_COMPRESSED_SIZE), "gzip") is not None
    assert compressed(bytes(MAX_COMPRESSED_SIZE + 1), "gzip") is None


def test_every_cors_answer_varies_by_origin() -> None:
    rule = CorsRule(("https://app.example.com", "*"))
    for origin in ("https://app.example.com", "https://other.example.com", None):
        assert rule.answer_headers(origin)["Vary"] == "Origin", origin
    assert rule.answer_headers("https://other.example.com")["Access-Control-Allow-Origin"] == "*"
    assert CorsRule(("*",)).answer_headers("https://other.example.com")["Vary"] == "Origin"
    assert CorsRule(()).answer_headers("https://other.example.com") == {}

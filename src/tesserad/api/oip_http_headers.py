"""The headers the HTTP inference listener (tesserad.api.oip_http) reads and writes besides the
protocol's own: X-Request-ID, response compression (Accept-Encoding) and CORS. Pure: no I/O."""

from __future__ import annotations

import re
import zlib

from aiohttp import hdrs
from multidict import CIMultiDictProxy

REQUEST_ID_HEADER = "X-Request-ID"
# What X-Request-ID a request may carry to have it echoed and logged: visible ASCII (UUIDs, hex,
# base64, W3C trace ids, Heroku's 20-200 characters), no longer than Heroku's. Anything else is
# dropped, never refused: a tracing header must not fail an inference request.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")

# Answers under this many bytes go uncompressed: the coding's own bytes and CPU outweigh the gain.
MIN_COMPRESSED_SIZE = 1024
# zlib level 1 against Triton's 6 (measured on the 2-core dev machine under load, 8 MiB of
# numbers as JSON: 0.57 s against 3.5 s, 48% of the size against 44%; 8 MiB of FP32 binary data:
# 1.5 s against 1.65 s, 93% either way).
COMPRESSION_LEVEL = 1
# Answers of this many bytes or more are compressed in a thread, off the event loop (measured as
# above: 1 KiB takes 15 us, 64 KiB 5 ms, 8 MiB over a second).
COMPRESS_OFF_LOOP_SIZE = 32 * 1024
# How many threads compress answers at once; more wait their turn, holding their call's slot.
COMPRESS_THREADS = 2
# Answers over this many bytes go uncompressed: each would hold a thread for over half a second
# (as measured above), and the compressed copy besides it (Triton compresses any size).
MAX_COMPRESSED_SIZE = 8 * 1024 * 1024
# An answer goes compressed only when that makes it under this share of its size: random binary
# data (FP32 tensors) compresses to 93%, its few bytes saved not worth the client's decompression.
COMPRESSED_SHARE = 0.9
# An answer over twice this many bytes is first judged by its leading ones, compressed alone: one
# that will not shrink is passed over for the CPU of a sample, not of the whole.
SAMPLE_SIZE = 64 * 1024
# A q-value as RFC 9110 writes it (its section 12.4.2).
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
# The codings an answer may be compressed with, as Triton offers them.
_RESPONSE_CODINGS = ("identity", "gzip", "deflate")

# What a CORS preflight is told: the methods and request headers the protocol's calls use (a
# browser sets Accept-Encoding itself), the headers a page may read from an answer, and how long
# a browser may keep the preflight's answer (seconds).
CORS_METHODS = "GET, POST"
CORS_REQUEST_HEADERS = (
    f"Authorization, Content-Type, Content-Encoding, Inference-Header-Content-Length, {REQUEST_ID_HEADER}"
)
CORS_EXPOSED_HEADERS = f"Inference-Header-Content-Length, {REQUEST_ID_HEADER}, Retry-After"
CORS_MAX_AGE_S = "600"


def request_id_of(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's X-Request-ID when it carries one it may (see _REQUEST_ID); None when it
    carries none, several, or one that is not such."""
    values = headers.getall(REQUEST_ID_HEADER, [])
    if len(values) != 1 or not _REQUEST_ID.fullmatch(values[0]):
        return None
    return values[0]


def response_coding(accept_encoding: str | None) -> str:
    """The coding to answer in for `accept_encoding` (the request's Accept-Encoding), as Triton
    picks it: of identity, gzip and deflate, the one of the highest q-value (1 when unsaid), the
    first listed of equals; one of q=0 never; identity when none (or no header, or `*` alone).
    A coding whose q is not a qvalue (RFC 9110: 0 to 1, up to 3 decimals), or is said twice, is
    taken as not acceptable: what its client meant is unknown."""
    chosen, weight = "identity", 0.0
    for item in (accept_encoding or "").split(","):
        coding, *parameters = item.split(";")
        coding = coding.strip().lower()
        if coding not in _RESPONSE_CODINGS:
            continue
        said = [
            text.strip()
            for name, _, text in (p.partition("=") for p in parameters)
            if name.strip().lower() == "q"
        ]
        if not said:
            value = 1.0
        elif len(said) == 1 and _QVALUE.fullmatch(said[0]):
            value = float(said[0])
        else:
            continue
        if value > weight:
            chosen, weight = coding, value
    return chosen


def compressed(body: bytes, coding: str) -> bytes | None:
    """`body` in `coding`: gzip, or deflate as zlib's format (RFC 9110; what tritonclient reads).
    None where it goes as it is: over MAX_COMPRESSED_SIZE, or not under COMPRESSED_SHARE of its
    size compressed (judged by its first SAMPLE_SIZE bytes first, when it is over twice that)."""
    if len(body) > MAX_COMPRESSED_SIZE:
        return None
    window = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    if len(body) > 2 * SAMPLE_SIZE:
        sample = zlib.compress(memoryview(body)[:SAMPLE_SIZE], COMPRESSION_LEVEL, window)
        if len(sample) >= COMPRESSED_SHARE * SAMPLE_SIZE:
            return None
    smaller = zlib.compress(body, COMPRESSION_LEVEL, window)
    return smaller if len(smaller) < COMPRESSED_SHARE * len(body) else None


class CorsRule:
    """Which pages may call the listener from a browser (serving.oip_http_cors_origins)."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self._origins = frozenset(origins)
        self._any = "*" in self._origins
        self.on = bool(self._origins)

    def allows(self, origin: str | None) -> bool:
        """Whether a page at `origin` (the request's Origin header) may call."""
        return origin is not None and (self._any or self.lists(origin))

    def lists(self, origin: str | None) -> bool:
        """Whether `origin` is listed itself, not taken by `*` alone."""
        return origin is not None and origin.strip().lower() in self._origins

    def answer_headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from `origin`: none when CORS is off; else
        always `Vary: Origin` (the answer differs by Origin, under `*` too: a request without one
        gets no CORS headers), and only that for an origin not allowed. A listed origin is named,
        with credentials; `*` answers any page without them (as the Fetch standard requires),
        which still lets a page send its token in Authorization."""
        if not self.on:
            return {}
        if not self.allows(origin):
            return {hdrs.VARY: hdrs.ORIGIN}
        assert origin is not None, "allows() is false without an origin"
        headers: dict[str, str] = {
            hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: CORS_EXPOSED_HEADERS,
            hdrs.VARY: hdrs.ORIGIN,
        }
        if self.lists(origin):
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin.strip()
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        else:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"
        return headers


# The headers an allowed page's preflight (OPTIONS) is answered with besides `answer_headers`.
PREFLIGHT_HEADERS = {
    hdrs.ACCESS_CONTROL_ALLOW_METHODS: CORS_METHODS,
    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: CORS_REQUEST_HEADERS,
    hdrs.ACCESS_CONTROL_MAX_AGE: CORS_MAX_AGE_S,
}

"""Gauges of the daemon's state, read at scrape time: what it is (tessera_build_info), whether its
tokens file and TLS certificate are fine (a broken tokens file is only logged while the old
tokens stay in use; a certificate is warned of in the log only from 7 days before it ends) and
which model versions are ready to serve."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tesserad.api.auth import AuthInterceptor
from tesserad.api.tls import ServerCertificates
from tesserad.serving.pool import LoadedVersion, LoadState

_BUILD = ("tessera_build_info", "Always 1; the tesserad version and the store schema it writes.")
_RELOAD_OK = (
    "tessera_tokens_reload_success",
    "1 when the last read of security.tokens_file applied it; 0 while the file cannot be used "
    "(the tokens read before stay in use).",
)
_RELOADED_AT = (
    "tessera_tokens_last_reload_timestamp_seconds",
    "When security.tokens_file was last read and applied (or found unchanged), in seconds since the epoch.",
)
_CERT_EXPIRY = (
    "tessera_tls_certificate_expiry_timestamp_seconds",
    "When the first certificate of the served chain (security.tls_cert_file) to end ends, in seconds "
    "since the epoch.",
)
_MODEL_READY = (
    "tessera_model_ready",
    "1 per model version listed in the serving pool and ready to serve; 0 while it loads, warms "
    "up, drains or after its load failed.",
)


class StateMetrics(Collector):
    """tessera_build_info, the tokens file's and the TLS certificate's gauges (those the daemon
    has), registered on `registry`; `pool`: the versions listed for tessera_model_ready, when the
    daemon serves."""

    def __init__(
        self,
        registry: CollectorRegistry,
        version: str,
        store_schema: int,
        auth: AuthInterceptor,
        certificates: ServerCertificates | None,
    ) -> None:
        self._version = version
        self._store_schema = store_schema
        self._auth = auth
        self._certificates = certificates
        self._pool: Callable[[], list[LoadedVersion]] | None = None
        # The PEM last parsed and the expiry it gave: a scrape parses again only after a rotation.
        self._expiry: tuple[bytes, float] | None = None
        registry.register(self)

    def serve_from(self, pool: Callable[[], list[LoadedVersion]]) -> None:
        self._pool = pool

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(*_BUILD, labels=["version", "store_schema"])
        build.add_metric([self._version, str(self._store_schema)], 1)
        yield build
        reload = self._auth.tokens_reload
        if reload is not None:
            yield GaugeMetricFamily(*_RELOAD_OK, value=1 if reload[0] else 0)
            yield GaugeMetricFamily(*_RELOADED_AT, value=reload[1])
        if self._certificates is not None:
            yield GaugeMetricFamily(
                *_CERT_EXPIRY, value=self._certificate_expiry(self._certificates.served_pem)
            )
        if self._pool is not None:
            ready = GaugeMetricFamily(*_MODEL_READY, labels=["model", "version"])
            for entry in self._pool():
                ready.add_metric(
                    [entry.model, str(entry.version)], 1 if entry.state is LoadState.READY else 0
                )
            yield ready

    def _certificate_expiry(self, pem: bytes) -> float:
        cached = self._expiry
        if cached is not None and cached[0] == pem:
            return cached[1]
        expiry = min(c.not_valid_after_utc.timestamp() for c in x509.load_pem_x509_certificates(pem))
        self._expiry = (pem, expiry)
        return expiry

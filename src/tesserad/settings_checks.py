"""Settings that do not go together, found from the settings alone: no file is read, no port or
peer consulted, so no restart mends them.

`tesserad serve` asks `refusal` before it imports the server (a second of CPU) and exits at once;
the daemon's start makes each check again where it uses the settings (a `Daemon` started from
code is refused just the same). This module imports nothing beyond the settings.
"""

from __future__ import annotations

from tesserad.config import Address, ReplicaSettings, SecuritySettings, Settings, TrainingSettings


def authentication_enabled(security: SecuritySettings) -> bool:
    """Whether a caller must prove who it is: a token, or a client certificate under mutual TLS."""
    return security.tokens_file is not None or security.tls_client_ca_file is not None


def exposed_listeners(settings: Settings) -> list[tuple[str, Address]]:
    """(setting, address) of each listener beyond loopback: the dashboard's and the HTTP
    inference one show the same data as the gRPC one, so they follow the same rules."""
    listeners = {
        "listen": settings.listen,
        "http_listen": settings.http_listen,
        "serving.oip_http_listen": settings.serving.oip_http_listen,
    }
    return [(name, a) for name, a in listeners.items() if a is not None and not a.is_loopback]


def exposure_refusal(settings: Settings, insecure: bool) -> str | None:
    """Why the daemon must not listen beyond loopback without authentication (None: it may)."""
    exposed = exposed_listeners(settings)
    if not exposed or authentication_enabled(settings.security) or insecure:
        return None
    setting, address = exposed[0]
    return (
        f"refusing to listen on {address} without authentication: anyone who can reach "
        "it could delete models and submit training jobs. Set security.tokens_file (--tokens-file; "
        f"make tokens with `tesserad tokens add`) or security.tls_client_ca_file, set {setting} to a loopback "
        "address such as 127.0.0.1, or pass --insecure if a network boundary you trust already "
        "controls access"
    )


def tls_refusal(security: SecuritySettings) -> str | None:
    """Why the security.tls_* settings do not go together, or None."""
    cert, key = security.tls_cert_file, security.tls_key_file
    if cert is None and key is None:
        if security.tls_client_ca_file is not None:
            return (
                "security.tls_client_ca_file is set but TLS is off: mutual TLS runs on top of TLS, "
                "so also set security.tls_cert_file and security.tls_key_file"
            )
        return None
    if cert is None or key is None:
        missing = "security.tls_key_file" if key is None else "security.tls_cert_file"
        return f"TLS needs both a certificate and its key: set {missing} too"
    return None


def metrics_refusal(security: SecuritySettings) -> str | None:
    """Why security.metrics_role or security.metrics_tls cannot be served, or None."""
    if security.metrics_role != "off" and security.tokens_file is None:
        return (
            f"security.metrics_role = {security.metrics_role} needs security.tokens_file: the tokens "
            "/metrics admits are its tokens; set it, or set security.metrics_role to off"
        )
    if security.metrics_tls and security.tls_cert_file is None:
        return (
            "security.metrics_tls serves /metrics with the gRPC listener's certificate: set "
            "security.tls_cert_file and security.tls_key_file, or set security.metrics_tls to false"
        )
    return None


def ray_tls_refusal(training: TrainingSettings, serves_tls: bool, mutual: bool) -> str | None:
    """Why the Ray workers' client certificate settings do not go together with the daemon's TLS
    (`serves_tls`, `mutual`: it asks clients for a certificate), or None."""
    cert, key = training.ray_tls_cert_file, training.ray_tls_key_file
    if (cert is None) != (key is None):
        missing = "training.ray_tls_key_file" if key is None else "training.ray_tls_cert_file"
        return f"a Ray workers' client certificate needs its key and the reverse: set {missing} too"
    if serves_tls and mutual and cert is None:
        return (
            "training.backend = ray under mutual TLS (security.tls_client_ca_file): set "
            "training.ray_tls_cert_file and training.ray_tls_key_file to a client certificate "
            "security.tls_client_ca_file signed and its key; the Ray workers present it to fetch datasets"
        )
    return None


def replica_tls_refusal(replica: ReplicaSettings) -> str | None:
    """Why the replica.tls_* settings do not go together, or None."""
    if (replica.tls_cert_file is None) != (replica.tls_key_file is None):
        return (
            "replica.tls_cert_file and replica.tls_key_file go together: set both for mutual TLS "
            "between a primary and its replicas, or neither"
        )
    return None


def refusal(settings: Settings, insecure: bool) -> str | None:
    """The first reason, in the order the daemon's start checks them, that these settings
    cannot serve together; None when there is none."""
    security = settings.security
    found = exposure_refusal(settings, insecure) or tls_refusal(security) or metrics_refusal(security)
    if found is None and settings.training.backend == "ray":
        serves_tls = security.tls_cert_file is not None
        found = ray_tls_refusal(settings.training, serves_tls, security.tls_client_ca_file is not None)
    return found or replica_tls_refusal(settings.replica)

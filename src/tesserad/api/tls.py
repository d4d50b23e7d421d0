"""The gRPC listener's TLS: its certificate, key and (mutual TLS) client CA, replaced without a restart.

gRPC's dynamic server credentials ask `ServerCertificates` for a new configuration at every
handshake; `reload` (on SIGHUP, or when the periodic check sees a file change) reads and checks
the files and hands them to the next handshake. Connections already open keep the certificate
they were made with. Files that cannot be used (unreadable, not PEM, a key of another
certificate, a key other users may read, a certificate outside its validity window) leave the
certificate in use serving, and the log says why; at start they stop the daemon. A certificate that ends within a week
(`security.certificates.EXPIRY_WARNING`) is served with a warning in the log.

Whether clients must present a certificate is fixed at start (gRPC fixes it with the
credentials): set or unset security.tls_client_ca_file with a restart.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tesserad.config import SecuritySettings, TrainingSettings
from tesserad.security.certificates import CertificateWindowError, check_validity
from tesserad.security.key_files import KeyFileModeError, check_key_file_mode
from tesserad.security.tokens import FileSignature, file_signature
from tesserad.settings_checks import ray_tls_refusal, tls_refusal
from tesserad.training.ray_worker import WorkerTls

log = logging.getLogger(__name__)


class CertificateError(Exception):
    """The TLS files cannot be used; the message names the setting, the file and the fix."""


class TlsSettingsError(CertificateError):
    """The security.tls_* settings do not go together (a certificate without its key, a client
    CA without TLS): wrong whatever the files hold."""


@dataclass(frozen=True)
class _Files:
    cert: Path
    key: Path
    client_ca: Path | None

    def signatures(self) -> tuple[FileSignature | None, ...]:
        return tuple(file_signature(path) for path in (self.cert, self.key, self.client_ca) if path)


class ServerCertificates:
    """The listener's certificate as last read with success; `credentials` serve it."""

    def __init__(self, files: _Files) -> None:
        self._files = files
        self._signatures = files.signatures()
        # Set by `reload`, taken by the next handshake; the lock because gRPC asks from its own threads.
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()
        self._also: list[Callable[[], None]] = []
        configuration, self._served_pem = _read(files)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            configuration,
            # grpc's stub leaves out the None its documentation allows (keep the configuration).
            self._next_configuration,  # type: ignore[arg-type]
            require_client_authentication=files.client_ca is not None,
        )

    @property
    def mutual(self) -> bool:
        return self._files.client_ca is not None

    @property
    def served_pem(self) -> bytes:
        """The certificate (chain) of the last read that applied the files, as PEM: what new
        handshakes get, whatever the file on disk holds now (a rotation refused, or not read yet)."""
        with self._lock:
            return self._served_pem

    def also_reload(self, reload: Callable[[], None]) -> None:
        """Call `reload` (on the event loop) after each read that applied the files, for the
        other listeners serving the same certificate (the dashboard's)."""
        self._also.append(reload)

    def changed(self) -> bool:
        """Whether a file looks different from when it was last read (a stat each, no read)."""
        return self._files.signatures() != self._signatures

    def read_again(self) -> None:
        """Read and check the files; the next handshake gets them. CertificateError keeps the
        certificate in use. The signatures are taken first, as TokenFile does, and a failed read
        is remembered too, so the periodic check does not report the same broken files again."""
        self._signatures = self._files.signatures()
        configuration, served_pem = _read(self._files)
        with self._lock:
            self._pending, self._served_pem = configuration, served_pem

    async def reload(self, trigger: str) -> None:
        """`read_again` off the event loop, logging what happened."""
        fields = {
            "trigger": trigger,
            "tls_cert_file": str(self._files.cert),
            "tls_key_file": str(self._files.key),
            "tls_client_ca_file": str(self._files.client_ca or ""),
        }
        try:
            await asyncio.to_thread(self.read_again)
        except CertificateError as exc:
            log.error(
                "TLS files not applied: new connections keep the certificate in use until they are fixed",
                extra={**fields, "error": str(exc)},
            )
            return
        for reload in self._also:
            reload()
        log.info("TLS files read again: new connections get them", extra=fields)

    def _next_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: the configuration read since the last handshake, or None to keep it."""
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration


def server_certificates(security: SecuritySettings) -> ServerCertificates | None:
    """TLS from the settings, or None for plaintext; CertificateError when they cannot be used."""
    refused = tls_refusal(security)
    if refused is not None:
        raise TlsSettingsError(refused)
    cert, key = security.tls_cert_file, security.tls_key_file
    if cert is None or key is None:
        return None
    return ServerCertificates(_Files(cert, key, security.tls_client_ca_file))


def _read(files: _Files) -> tuple[grpc.ServerCertificateConfiguration, bytes]:
    """The files as gRPC takes them, after the checks gRPC does not make, and the certificate's PEM."""
    cert_pem = read_pem("security.tls_cert_file", files.cert)
    key_pem = read_pem("security.tls_key_file", files.key)
    try:
        check_key_file_mode("security.tls_key_file", files.key)
    except KeyFileModeError as exc:
        raise CertificateError(str(exc)) from None
    client_ca = files.client_ca
    ca_pem = None if client_ca is None else read_pem("security.tls_client_ca_file", client_ca)
    # gRPC would take a mismatched pair and fail every handshake after it; the ssl module checks
    # the pair (and the CA bundle) first, so a bad file is refused before it serves.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        load_key_pair(context, files.cert, files.key)
    except EncryptedKeyError:
        raise CertificateError(encrypted_key_message("security.tls_key_file", files.key)) from None
    except ssl.SSLError as exc:
        raise CertificateError(
            key_pair_message("security.tls_cert_file", files.cert, "security.tls_key_file", files.key, exc)
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise CertificateError(
                f"security.tls_client_ca_file {client_ca} holds no usable CA certificate ({exc.reason or exc})"
            ) from None
    check_certificate_window("security.tls_cert_file", files.cert, cert_pem)
    # The check read the files by name: a rotation landing between the reads would pair bytes
    # that were never checked together.
    if read_pem("security.tls_cert_file", files.cert) != cert_pem or (
        read_pem("security.tls_key_file", files.key) != key_pem
    ):
        raise CertificateError(
            f"security.tls_cert_file {files.cert} or security.tls_key_file {files.key} changed "
            "while it was read; it is read again at the next check or SIGHUP"
        )
    configuration = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem)
    return configuration, cert_pem


def ray_worker_tls(certificates: ServerCertificates | None, training: TrainingSettings) -> WorkerTls | None:
    """How Ray workers reach this daemon (training.backend = ray): None when it serves plaintext
    (`certificates` None); else trusting the certificate it serves, with
    training.ray_tls_cert_file under mutual TLS. TlsSettingsError when the settings do not go
    together, CertificateError when a file cannot be used."""
    refused = ray_tls_refusal(
        training, certificates is not None, certificates is not None and certificates.mutual
    )
    if refused is not None:
        raise TlsSettingsError(refused)
    if certificates is None:
        return None
    cert, key = training.ray_tls_cert_file, training.ray_tls_key_file
    # The daemon's own certificate (chain) is what its clients must accept, whoever signed it: the
    # one it serves, not the file, which may hold a certificate refused or not read yet.
    served = certificates.served_pem
    if cert is None or key is None:
        return WorkerTls(served, b"", b"")
    cert_pem = read_pem("training.ray_tls_cert_file", cert)
    key_pem = read_pem("training.ray_tls_key_file", key)
    try:
        check_key_file_mode("training.ray_tls_key_file", key)
    except KeyFileModeError as exc:
        raise CertificateError(str(exc)) from None
    load_client_key_pair(
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        "training.ray_tls_cert_file",
        cert,
        "training.ray_tls_key_file",
        key,
    )
    check_certificate_window("training.ray_tls_cert_file", cert, cert_pem)
    return WorkerTls(served, cert_pem, key_pem)


class EncryptedKeyError(Exception):
    """The private key is encrypted (OpenSSL asked for its passphrase); gRPC cannot use it."""


def load_key_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """`context.load_cert_chain(cert, key)`, EncryptedKeyError for an encrypted key. Without a
    password callback OpenSSL asks the terminal for the passphrase (blocking a daemon started in
    one), or fails with a bare OSError when there is none."""
    context.load_cert_chain(cert, key, password=_no_passphrase)


def load_client_key_pair(
    context: ssl.SSLContext, cert_setting: str, cert: Path, key_setting: str, key: Path
) -> None:
    """`load_key_pair` of the files of settings `cert_setting` and `key_setting`, each already
    read once, with CertificateError naming the setting and file at fault."""
    try:
        load_key_pair(context, cert, key)
    except EncryptedKeyError:
        raise CertificateError(encrypted_key_message(key_setting, key)) from None
    except ssl.SSLError as exc:
        raise CertificateError(key_pair_message(cert_setting, cert, key_setting, key, exc)) from None
    except OSError as exc:
        # Read before, then moved or removed before ssl loaded it (a rotation under way); ssl's
        # error names neither file, so each is read again to say which.
        read_pem(cert_setting, cert)
        read_pem(key_setting, key)
        raise CertificateError(
            f"{cert_setting} {cert} and {key_setting} {key} could not be loaded: "
            f"{exc.strerror or exc}; check that neither is replaced while it is read"
        ) from None


def encrypted_key_message(setting: str, key: Path) -> str:
    return (
        f"{setting} {key} is encrypted, and gRPC takes only an unencrypted key; write it out "
        f"decrypted (`openssl pkey -in {key} -out NEW_KEY`), readable by tesserad alone, and "
        f"point {setting} at it"
    )


def check_certificate_window(setting: str, path: Path, pem: bytes) -> None:
    """`check_validity` as CertificateError, with a warning logged for each certificate that
    ends soon."""
    try:
        expiring = check_validity(setting, path, pem)
    except CertificateWindowError as exc:
        raise CertificateError(str(exc)) from None
    for certificate in expiring:
        log.warning(
            "TLS certificate expires soon: renew it before clients refuse it",
            extra={
                "setting": setting,
                "file": str(path),
                "subject": certificate.subject,
                "not_before": certificate.not_before,
                "not_after": certificate.not_after,
            },
        )


def _no_passphrase() -> bytes:
    raise EncryptedKeyError


# What to do about a file that cannot be read, by errno; others: check the file.
_READ_FIXES = {
    errno.ENOENT: "put the file there or point {setting} at it",
    errno.EISDIR: "point {setting} at a PEM file in it",
    errno.EACCES: "make it readable by the user tesserad runs as",
}


def unreadable_pem(setting: str, path: Path, exc: OSError) -> CertificateError:
    """`exc`, the failed read of the file `setting` names, as read_pem words it."""
    fix = _READ_FIXES.get(exc.errno or 0, "check the file and {setting}").format(setting=setting)
    return CertificateError(f"{setting} {path} cannot be read: {exc.strerror or exc}; {fix}")


def read_pem(setting: str, path: Path) -> bytes:
    """The PEM file `setting` names; CertificateError naming the setting, the file, the reason
    (as the tokens file's errors do, without Python's [Errno N]) and what to do."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable_pem(setting, path, exc) from None
    if b"-----BEGIN " not in data:
        raise CertificateError(f"{setting} {path} is not a PEM file (no -----BEGIN line)")
    return data


def key_pair_message(cert_setting: str, cert: Path, key_setting: str, key: Path, exc: ssl.SSLError) -> str:
    return (
        f"{cert_setting} {cert} and {key_setting} {key} are not a usable certificate and matching "
        f"private key ({exc.reason or exc}); check that the key belongs to the certificate and is "
        "not encrypted"
    )


__all__ = [
    "CertificateError",
    "EncryptedKeyError",
    "ServerCertificates",
    "TlsSettingsError",
    "check_certificate_window",
    "encrypted_key_message",
    "key_pair_message",
    "load_key_pair",
    "ray_worker_tls",
    "read_pem",
    "server_certificates",
    "unreadable_pem",
]

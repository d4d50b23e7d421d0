"""Whether a PEM certificate (chain) is inside its validity window now.

OpenSSL loads an expired or not-yet-valid certificate without a word, and every client then
refuses the handshake; the listeners check the window before they serve a certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

# Long enough for a renewal to be noticed before clients start failing their handshakes.
EXPIRY_WARNING = timedelta(days=7)


class CertificateWindowError(Exception):
    """A certificate is outside its validity window, or unreadable; the message names the
    setting, the file, the window and the fix."""


@dataclass(frozen=True)
class Expiring:
    """A certificate that ends within EXPIRY_WARNING."""

    subject: str
    not_before: str
    not_after: str


def check_validity(setting: str, path: Path, pem: bytes) -> list[Expiring]:
    """The certificates of `pem` (the leaf and any chain after it) that end within
    EXPIRY_WARNING; CertificateWindowError when one is outside its window now."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateWindowError(f"{setting} {path} holds no readable certificate ({exc})") from None
    now = datetime.now(UTC)
    expiring = []
    for certificate in certificates:
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        subject = certificate.subject.rfc4514_string()
        window = f"valid from {_utc(start)} to {_utc(end)}, now {_utc(now)}"
        if now > end:
            raise CertificateWindowError(
                f"{setting} {path}: the certificate {subject!r} has expired ({window}); install a "
                "renewed certificate"
            )
        if now < start:
            raise CertificateWindowError(
                f"{setting} {path}: the certificate {subject!r} is not valid yet ({window}); check "
                "this machine's clock, or install a certificate valid now"
            )
        if end - now < EXPIRY_WARNING:
            expiring.append(Expiring(subject, _utc(start), _utc(end)))
    return expiring


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = ["EXPIRY_WARNING", "CertificateWindowError", "Expiring", "check_validity"]

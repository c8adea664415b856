"""TLS for both ports, from the settings: gRPC credentials and the REST port's context, with one
clear error for a bad file (gRPC's own is opaque)."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import grpc

from tlserve.service.settings import ServerSettings


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


def tls_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """gRPC server credentials from the TLS settings (None: plaintext). ValueError names a bad file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    tls_context(settings)  # NOTE: validates the files with a clear message; gRPC's own is opaque
    cert = _read_pem(settings.tls_cert_file, "tls_cert_file")
    key = _read_pem(settings.tls_key_file, "tls_key_file")
    ca = settings.tls_client_ca_file
    client_ca = None if ca is None else _read_pem(ca, "tls_client_ca_file")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The REST port's TLS context, same files and rules as gRPC's (None: plaintext)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(f"cannot use tls_cert_file {settings.tls_cert_file} with tls_key_file "
                         f"{settings.tls_key_file}: {reason}") from None  # fmt: skip
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(settings.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use tls_client_ca_file {settings.tls_client_ca_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None  # fmt: skip
        context.verify_mode = ssl.CERT_REQUIRED
    return context


ANY_ADDRESS = ("0.0.0.0", "::")
"""Hosts that bind every interface."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the ports to this machine (a host name may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_summary(settings: ServerSettings) -> str:
    if settings.tls_cert_file is None:
        return "plaintext (no TLS)"
    return "mutual TLS (client certificates required)" if settings.tls_client_ca_file else "TLS"

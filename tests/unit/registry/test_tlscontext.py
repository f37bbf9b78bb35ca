"""The shared TLS context verifies servers against CAs looked up lazily by subject hash."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lazybuild.registry import tlscontext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server for 127.0.0.1 and the PEM of the CA that signed its certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("lazybuild test CA", ca_key, "lazybuild test CA")
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _certificate("registry", server_key, "lazybuild test CA")
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + server.public_bytes(serialization.Encoding.PEM)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, ca_pem
    stop.set()
    thread.join(timeout=5)
    listener.close()


def _hashed_directory(directory: Path, ca_pem: Path | None) -> Path:
    directory.mkdir()
    if ca_pem is not None:
        subject_hash = subprocess.run(
            ["openssl", "x509", "-subject_hash", "-noout", "-in", str(ca_pem)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (directory / f"{subject_hash}.0").write_bytes(ca_pem.read_bytes())
    (directory / "README").write_text("not a certificate\n")
    return directory


def _handshake(port: int) -> bytes:
    context = tlscontext.shared_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.recv(5)


@pytest.fixture
def system_capath(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Point the 'system' CA directory at a test directory; a fresh context per test."""
    chosen: list[Path] = []
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    real = ssl.get_default_verify_paths()

    def verify_paths() -> ssl.DefaultVerifyPaths:
        return real._replace(capath=str(chosen[0]))

    monkeypatch.setattr(ssl, "get_default_verify_paths", verify_paths)
    tlscontext.shared_ssl_context.cache_clear()
    yield chosen
    tlscontext.shared_ssl_context.cache_clear()


def test_a_server_signed_by_a_ca_in_the_hashed_directory_is_trusted(
    tls_server: tuple[int, Path], system_capath: list[Path], tmp_path: Path
) -> None:
    port, ca_pem = tls_server
    system_capath.append(_hashed_directory(tmp_path / "certs", ca_pem))
    assert _handshake(port) == b"hello"


def test_a_server_signed_by_an_unknown_ca_is_refused(
    tls_server: tuple[int, Path], system_capath: list[Path], tmp_path: Path
) -> None:
    port, _ = tls_server
    other_ca = tmp_path / "other.pem"
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca.write_bytes(
        _certificate("another CA", other_key, "another CA")
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(other_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    system_capath.append(_hashed_directory(tmp_path / "certs", other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port)


def test_ssl_cert_file_is_honoured(
    tls_server: tuple[int, Path],
    system_capath: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, ca_pem = tls_server
    system_capath.append(_hashed_directory(tmp_path / "certs", None))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    assert _handshake(port) == b"hello"

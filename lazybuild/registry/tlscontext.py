"""One TLS context per process for every registry client, cheap to make.

A context that loads a CA bundle parses every certificate in it up front, a tenth of a
second in each lazybuild process, on the path to a build's first step. The system's
hashed CA directory is read lazily instead: OpenSSL opens only the certificates a
handshake asks for. ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured as httpx
honours them; without a hashed directory the bundle that ships with httpx is used.
The context is read-only once made, so sharing it is safe.
"""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

import httpx


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return httpx.create_ssl_context()
    capath = ssl.get_default_verify_paths().capath
    if capath is None or not _has_hashed_certificates(Path(capath)):
        return httpx.create_ssl_context()
    return ssl.create_default_context(capath=capath)


def _has_hashed_certificates(directory: Path) -> bool:
    """Whether ``directory`` holds the ``<subject hash>.0`` links OpenSSL looks up."""
    try:
        with os.scandir(directory) as entries:
            return any(entry.name.endswith(".0") for entry in entries)
    except OSError:
        return False

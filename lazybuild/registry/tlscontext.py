"""One TLS context per process for every registry client.

Building a context loads the CA bundle, which costs a tenth of a second or more; a
build makes several clients (resolving, exporting, the filesystem process), each of
which would otherwise build its own. The context is read-only once made, so sharing it
is safe.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()

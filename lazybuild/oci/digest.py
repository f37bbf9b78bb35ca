"""Content digests (``algorithm:hex``), computed and checked."""

from __future__ import annotations

import hashlib
import re

from lazybuild.errors import DigestMismatchError, FormatError

# Matched with fullmatch: "$" would also accept a trailing newline.
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(digest: str, where: str = "") -> str:
    """Return ``digest`` if it is a well-formed sha256/sha512 digest, else raise FormatError."""
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        suffix = f" in {where}" if where else ""
        raise FormatError(f"malformed digest {digest!r:.150}{suffix}")
    return digest


def new_hasher(digest: str) -> hashlib._Hash:
    """A hasher of the algorithm that ``digest`` names."""
    algorithm = validate_digest(digest).split(":", 1)[0]
    return hashlib.new(algorithm)


def verify_digest(data: bytes, digest: str, what: str) -> bytes:
    """Return ``data`` when it hashes to ``digest``; raise DigestMismatchError otherwise."""
    hasher = new_hasher(digest)
    hasher.update(data)
    actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != digest:
        raise DigestMismatchError(f"{what}: expected {digest}, got {actual}")
    return data

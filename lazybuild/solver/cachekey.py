"""Cache keys: what a vertex's result is stored under, across builds.

A vertex digest says *which op* this is in one graph; a cache key says *which result* it
would compute. The key of output ``o`` of a vertex hashes, in order:

- the op's ``CacheMap.digest`` (its own checksum, e.g. an image's manifest digest),
- ``o``,
- for every input: its ``CacheDep.selector`` and either the key of the input's output
  (a "fast" dependency, known without computing anything) or a digest of the input's
  content (a "slow" dependency from ``CacheDep.compute_digest``).

So a key changes exactly when the op or something it reads changes, and a changed
input invalidates only its dependents. Keys are ``sha256:<hex>`` of canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

# Bumped when the recipe changes, so old entries simply stop matching.
KEY_VERSION = 1


@dataclass(frozen=True)
class DepKey:
    """One input's part of a key: ``digest`` is its cache key, or its content digest
    when ``content`` is true."""

    selector: str
    digest: str
    content: bool = False


def cache_key(op_digest: str, output_index: int, deps: Sequence[DepKey]) -> str:
    document = {
        "version": KEY_VERSION,
        "op": op_digest,
        "output": output_index,
        "inputs": [
            {"selector": dep.selector, "digest": dep.digest, "content": dep.content} for dep in deps
        ],
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(encoded).hexdigest()

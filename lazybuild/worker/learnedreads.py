"""Learned prefetch: what a RUN step read from its base image, remembered for next time.

A step such as ``RUN go build`` reads thousands of files of its builder image, one
after the other; cold, each is a round trip. After a step ran, the files it read from
the lazily served base layers are kept here, by the layer's position in the base image.
The next time a step with the same command and working directory runs on that base
image, even a newer version of it (the key names the repository, not the digest) or
with an empty chunk cache, those files are fetched in a few large requests, in the
order they were read, as the step starts; paths the new layers lack are skipped.

A record is a hint: a wrong or stale one costs bytes, never correctness (every chunk is
still verified against the TOC of the layer actually mounted).

A new record adds to the old one instead of replacing it: lazy layers are EROFS images
whose file pages the kernel keeps, so a step that runs after another step of the same
build read the same files reads them from memory, and the filesystem never sees those
reads. What this run saw comes first, in its order, then what earlier runs saw and this
one did not, up to the bound. A file a step stopped reading stays in the record (a few
bytes fetched too many on a cold runner) rather than one a step still reads dropping out.

Records: ``<state>/build/learned/<key>.json``, ``{"version": 1, "layers": [[paths]]}``
with one list per base layer, bottom first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazybuild.oci.localblob import layout_of
from lazybuild.registry.reference import Reference
from lazybuild.state.atomicfile import write_atomic
from lazybuild.worker.layers import Snapshot

log = logging.getLogger(__name__)

_VERSION = 1
# A record beyond this many files is cut (a step that reads a whole image learns nothing
# a prefetch could use better than the background fetch).
MAX_FILES = 20_000


def step_key(args: Sequence[str], cwd: str, snapshot: Snapshot) -> str | None:
    """The record's name for a step running ``args`` in ``cwd`` on ``snapshot``; None
    when the snapshot has no lazily served base layer to learn about."""
    # Base images' layers only: a build cache's layers are other machines' steps, which
    # this machine may have made itself (then they are local, not remote).
    layers = snapshot.base_layers
    if not layers:
        return None
    # Repositories, not digests: a rebuilt base image is read the same way.
    images = sorted({_repository(layer.source) for layer in layers})
    shape = {"version": _VERSION, "images": images, "layers": len(layers)}
    payload = json.dumps({**shape, "args": list(args), "cwd": cwd}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _repository(source: str) -> str:
    layout = layout_of(source)  # an OCI layout's image (--build-context oci-layout://)
    return str(layout) if layout is not None else Reference.parse(source).name


class LearnedReads:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # The records this build found or wrote, for a build cache export.
        self.touched: set[str] = set()

    def load(self, key: str) -> list[list[str]] | None:
        """The files read last time, per base layer (bottom first); None if unknown."""
        try:
            document: Any = json.loads((self.directory / f"{key}.json").read_bytes())
        except (OSError, ValueError):
            return None
        layers = document.get("layers") if isinstance(document, dict) else None
        if document.get("version") != _VERSION or not isinstance(layers, list):
            return None
        if not all(isinstance(paths, list) for paths in layers):
            return None
        self.touched.add(key)
        return [[path for path in paths if isinstance(path, str)] for paths in layers]

    def adopt(self, key: str, layers: Sequence[Sequence[str]]) -> bool:
        """Keep a record learned elsewhere (an imported build cache) unless this machine
        has one of its own; whether it was kept."""
        if (self.directory / f"{key}.json").exists():
            return False
        self.save(key, layers)
        return True

    def save(self, key: str, layers: Sequence[Sequence[str]]) -> None:
        """Record what a step read (per base layer, bottom first), added to what earlier
        runs of it read (see the module docstring)."""
        earlier = self.load(key)
        if earlier is not None and len(earlier) == len(layers):
            layers = [_merged(now, before) for now, before in zip(layers, earlier, strict=True)]
        kept: list[list[str]] = []
        budget = MAX_FILES
        for paths in layers:
            kept.append(list(paths[: max(0, budget)]))
            budget -= len(kept[-1])
        data = json.dumps({"version": _VERSION, "layers": kept}).encode()
        try:
            write_atomic(self.directory / f"{key}.json", data)
        except OSError as exc:  # only the next build gets slower
            log.warning("cannot keep what the step read: %s", exc)
            return
        self.touched.add(key)


def _merged(now: Sequence[str], before: Sequence[str]) -> list[str]:
    seen = set(now)
    return [*now, *(path for path in before if path not in seen)]

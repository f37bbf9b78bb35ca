"""What a build result is: a stack of layers, bottom first.

A base image's layers stay in the registry (``RemoteLayer``) and are mounted lazily;
layers a build step made are directories in overlayfs form on local disk
(``LocalLayer``: whiteouts as 0/0 character devices, opaque directories by xattr), the
upper directory the step ran with. A layer becomes an eStargz blob only when an image
is exported, so the layers of stages nobody exports are never compressed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.oci.descriptor import Descriptor


@dataclass(frozen=True)
class RemoteLayer:
    """A layer of a base image: ``descriptor`` in repository ``source`` (a pinned
    reference, ``registry/repo@sha256:...``), whose uncompressed digest is ``diff_id``."""

    descriptor: Descriptor
    source: str
    diff_id: str
    # A build step's layer from an imported build cache (``remotecache``), not a base
    # image's: mounted the same way, but not counted among the base image's layers.
    from_cache: bool = False

    @property
    def key(self) -> str:
        return self.descriptor.digest

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "descriptor": self.descriptor.to_json(),
            "source": self.source,
            "diff_id": self.diff_id,
        }
        if self.from_cache:
            body["from_cache"] = True
        return {"remote": body}


@dataclass(frozen=True)
class LocalLayer:
    """A layer a build step made: ``path`` is its tree in overlayfs form; ``id`` names it
    in the layer store."""

    id: str
    path: Path

    @property
    def key(self) -> str:
        return f"local:{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {"local": {"id": self.id, "path": str(self.path)}}


Layer = RemoteLayer | LocalLayer


def layer_from_json(data: Any) -> Layer:
    if not isinstance(data, dict) or len(data) != 1:
        raise FormatError("a layer record is not a one-key object")
    ((kind, body),) = data.items()
    if not isinstance(body, dict):
        raise FormatError(f"layer record {kind!r} is not an object")
    if kind == "remote":
        return RemoteLayer(
            descriptor=Descriptor.from_json(body.get("descriptor"), "layer descriptor"),
            source=str(body["source"]),
            diff_id=str(body["diff_id"]),
            from_cache=body.get("from_cache") is True,
        )
    if kind == "local":
        return LocalLayer(id=str(body["id"]), path=Path(str(body["path"])))
    raise FormatError(f"unknown layer kind {kind!r}")


@dataclass(frozen=True)
class Snapshot:
    """A filesystem: ``layers`` stacked bottom first; the solver's ``Result``.

    Layers live as long as the store keeps them (``lazybuild prune`` removes those no
    cache record names), so references need no counting: ``release`` does nothing and
    ``clone`` returns the same value.
    """

    layers: tuple[Layer, ...] = ()

    @property
    def id(self) -> str:
        return json.dumps([layer.to_json() for layer in self.layers], sort_keys=True)

    @property
    def base_layers(self) -> list[RemoteLayer]:
        """The base images' layers, bottom first: remote ones not from a build cache."""
        remote = self.remote_layers
        return [layer for layer in remote if not layer.from_cache]

    @property
    def remote_layers(self) -> list[RemoteLayer]:
        """The layers served from a registry (a base image's), bottom first."""
        return [layer for layer in self.layers if isinstance(layer, RemoteLayer)]

    @classmethod
    def from_id(cls, text: str) -> Snapshot:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise FormatError(f"a snapshot id is not JSON: {error}") from None
        if not isinstance(records, list):
            raise FormatError("a snapshot id is not a list of layers")
        return cls(tuple(layer_from_json(record) for record in records))

    async def release(self) -> None:
        return None

    def clone(self) -> Snapshot:
        return self

    def on_top(self, layers: Sequence[Layer]) -> Snapshot:
        return Snapshot(self.layers + tuple(layers))

    @property
    def is_empty(self) -> bool:
        return not self.layers

"""A cached snapshot's base layers of an OCI layout are opened from this build's layout
of the same manifest (``rehome_layout_layers``), not the directory of the build that
made the record (through the daemon, a copy since removed)."""

from __future__ import annotations

from pathlib import Path

from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.localblob import layout_source
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot
from lazybuild.worker.layoutimage import rehome_layout_layers

MANIFEST = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64


def _layer(source: str, n: int, *, from_cache: bool = False) -> RemoteLayer:
    descriptor = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", f"sha256:{n:064x}", 9)
    return RemoteLayer(descriptor, source, f"sha256:{n + 100:064x}", from_cache)


def test_layout_layers_come_from_this_builds_layout() -> None:
    old = layout_source(Path("/old"), MANIFEST)
    new = layout_source(Path("/new"), MANIFEST)
    other = layout_source(Path("/old"), OTHER)
    registry = f"registry.example/repo@{MANIFEST}"
    local = LocalLayer("abc", Path("/layers/abc"))
    snapshot = Snapshot(
        (
            _layer(old, 1),
            _layer(other, 2),  # an image this build did not resolve: as it was
            _layer(registry, 3),
            _layer(old, 4, from_cache=True),  # an imported cache's: its own layout
            local,
        )
    )
    rehomed = rehome_layout_layers(snapshot, {MANIFEST: new})
    sources = [layer.source for layer in rehomed.remote_layers]
    assert sources == [new, other, registry, old]
    assert rehomed.layers[-1] == local
    assert rehome_layout_layers(snapshot, {}) == snapshot
